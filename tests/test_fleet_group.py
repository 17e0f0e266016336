"""kit.fleet.Group with in-memory devices: results and named failures, retry decided by error type
(with a reconnect each time), the per-sshd connection limit and the overall parallelism."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import pytest

from kit.errors import AgentRefused, DeviceUnreachable, EdgeKitError, HostKeyRejected, LinkLost
from kit.fleet import Group, GroupResult, Retry
from kit.fleet.group_ops import fleet_status, rollback_group
from kit.fleet.options import RolloutOptions


@dataclass
class Entry:
    name: str
    host: str = "10.0.0.1"
    port: int = 22


def _ok(verb, result):
    return {"schema_version": 1, "verb": verb, "ok": True, "result": result}


class FakeDevice:
    """Answers agent verbs from a script; `fail` holds errors raised by the next calls, in order."""

    def __init__(self, entry, fail=(), answers=None):
        self.name, self.emulated, self.closed = entry.name, False, False
        self.fail, self.answers = list(fail), answers or {}

    def run_agent(self, args, timeout=900, on_stderr=None):
        if self.fail:
            raise self.fail.pop(0)
        return self.answers.get(args[0]) or _ok(args[0], {"models": {}})

    def stage_bundle(self, bundle_path, progress=None):
        return f"/remote/{bundle_path}"

    def close(self):
        self.closed = True


class Lab:
    """connect(entry) for a Group: counts connects and records the devices it opened."""

    def __init__(self, make=None):
        self.make = make or (lambda entry, n: FakeDevice(entry))
        self.connects: dict[str, int] = {}
        self.opened: list[FakeDevice] = []
        self.lock = threading.Lock()

    def __call__(self, entry):
        with self.lock:
            n = self.connects[entry.name] = self.connects.get(entry.name, 0) + 1
        dev = self.make(entry, n)
        self.opened.append(dev)
        return dev


FAST = Retry(retries=2, backoff_s=0.001, backoff_max_s=0.002)


def test_results_and_named_failures_in_group_order():
    refused = {"status": {"schema_version": 1, "verb": "status", "ok": False,
                          "error": {"code": "bad_name", "message": "no such model"}}}
    lab = Lab(lambda e, n: FakeDevice(e, answers=refused if e.name == "b" else None))
    entries = [Entry("a"), Entry("b"), Entry("c", port=2222)]
    r = Group(entries, connect=lab, retry=FAST).run(lambda dev: {"models": dev.agent(["status"], 60)["models"]})
    assert isinstance(r, GroupResult) and not r.ok
    assert r.failed == ["b"] and r.succeeded == ["a", "c"]
    assert isinstance(r.failures["b"], AgentRefused) and r.failures["b"].code == "bad_name"
    assert r.results["a"] == {"models": {}}
    assert lab.connects == {"a": 1, "b": 1, "c": 1}  # an agent refusal is an answer: not retried
    assert all(d.closed for d in lab.opened)
    doc = json.loads(json.dumps(r.to_dict()))
    assert doc["ok"] is False and doc["failed"] == ["b"]
    assert [row["device"] for row in doc["devices"]] == ["a", "b", "c"]
    assert doc["devices"][1] == {"device": "b", "ok": False, "error": r.failures["b"].args[0],
                                 "error_type": "AgentRefused", "code": "bad_name"}


def test_lost_link_is_retried_after_reconnecting_others_are_not():
    def make(entry, n):
        if entry.name == "flaky":  # the first two connections drop mid-call, the third works
            return FakeDevice(entry, fail=[LinkLost(entry.name, "the connection dropped")] if n < 3 else [])
        if entry.name == "down":
            raise DeviceUnreachable(entry.name, "cannot connect (connection refused)")
        if entry.name == "hostkey":
            raise HostKeyRejected(entry.name, "host key CHANGED")
        return FakeDevice(entry, fail=[EdgeKitError(f"device {entry.name}: cannot connect to x (looks like a link error)")])

    lab = Lab(make)
    retries = []
    g = Group([Entry("flaky"), Entry("down"), Entry("hostkey"), Entry("plain")], connect=lab, retry=FAST,
              on_retry=lambda name, attempt, err: retries.append((name, attempt, type(err).__name__)))
    r = g.run(lambda dev: dev.agent(["status"], 60))
    assert r.succeeded == ["flaky"] and lab.connects["flaky"] == 3
    assert lab.connects["down"] == 3 and isinstance(r.failures["down"], DeviceUnreachable)  # 1 + 2 retries
    assert lab.connects["hostkey"] == 1 and isinstance(r.failures["hostkey"], HostKeyRejected)
    assert lab.connects["plain"] == 1  # the message reads like a link error; the type says it is not one
    assert sorted(retries) == [("down", 1, "DeviceUnreachable"), ("down", 2, "DeviceUnreachable"),
                               ("flaky", 1, "LinkLost"), ("flaky", 2, "LinkLost")]
    rows = {row["device"]: row for row in r.rows()}
    assert rows["down"]["error"].startswith("unreachable: ") and rows["hostkey"]["error_type"] == "HostKeyRejected"


def test_a_bug_in_fn_is_raised_after_every_device_finished():
    done = []

    def fn(dev):
        if dev.name == "a":
            raise ValueError("bug")
        time.sleep(0.05)
        done.append(dev.name)
        return {}

    with pytest.raises(ValueError, match="bug"):
        Group([Entry("a"), Entry("b"), Entry("c")], connect=Lab()).run(fn)
    assert sorted(done) == ["b", "c"]


def test_connects_are_bounded_per_sshd_and_work_by_max_parallel():
    state = {"connecting": {}, "peak_connecting": {}, "running": 0, "peak_running": 0}
    lock = threading.Lock()

    def make(entry, n):
        key = (entry.host, entry.port)
        with lock:
            state["connecting"][key] = state["connecting"].get(key, 0) + 1
            state["peak_connecting"][key] = max(state["peak_connecting"].get(key, 0), state["connecting"][key])
        time.sleep(0.03)
        with lock:
            state["connecting"][key] -= 1
        return FakeDevice(entry)

    def fn(dev):
        with lock:
            state["running"] += 1
            state["peak_running"] = max(state["peak_running"], state["running"])
        dev.agent(["status"], 60)
        time.sleep(0.02)
        with lock:
            state["running"] -= 1

    entries = [Entry(f"a{i}", host="10.0.0.1") for i in range(8)] + [Entry(f"b{i}", host="10.0.0.2") for i in range(8)]
    r = Group(entries, connect=Lab(make), max_parallel=6, max_connects_per_sshd=2).run(fn)
    assert r.ok and len(r.results) == 16
    assert state["peak_connecting"] == {("10.0.0.1", 22): 2, ("10.0.0.2", 22): 2}
    assert state["peak_running"] <= 6


def test_only_and_while_waiting():
    calls = []
    g = Group([Entry("a"), Entry("b"), Entry("c")], connect=Lab())
    r = g.run(lambda dev: {"name": dev.name}, only=["c", "a"], while_waiting=lambda s: (calls.append(s), time.sleep(s)))
    assert r.names == ["a", "c"] and r.results == {"a": {"name": "a"}, "c": {"name": "c"}}
    assert calls and calls[-1] == 0  # a last call after every device finished
    assert Group([], connect=Lab()).run(lambda dev: {}).to_dict() == {"ok": True, "failed": [], "devices": []}


def test_bad_groups_are_refused():
    with pytest.raises(EdgeKitError, match="listed twice"):
        Group([Entry("a"), Entry("a")])
    with pytest.raises(EdgeKitError, match="at least 1"):
        Group([Entry("a")], max_parallel=0)


def test_fleet_status_and_rollback_rows():
    answers = {"rollback": _ok("rollback", {"changed": True, "current": "v1", "previous": "v2"})}
    lab = Lab(lambda e, n: FakeDevice(e, answers=answers) if e.name != "down"
              else (_ for _ in ()).throw(DeviceUnreachable(e.name, "connection refused")))
    entries = [Entry("a"), Entry("down")]
    rows = fleet_status(entries, connect=lab, options=RolloutOptions(retries=1, backoff_s=0.001))
    assert rows[0] == {"device": "a", "ok": True, "models": {}}
    assert rows[1]["ok"] is False and "unreachable" in rows[1]["error"] and lab.connects["down"] == 2
    rows = rollback_group(entries, "tiny", connect=lab, options=RolloutOptions(retries=0))
    assert rows[0] == {"device": "a", "ok": True, "changed": True, "current": "v1", "previous": "v2"}
    assert not rows[1]["ok"]
