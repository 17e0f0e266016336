"""One device's rollout steps (kit.fleet.device_update) against an in-memory agent: each recorded
stage resumes where it should, a failed gate switches back, a lost link leaves the device
`unreachable` with what it is known to run, a refusal leaves it `failed`."""

from __future__ import annotations

import threading
from pathlib import Path

from kit.errors import LinkLost
from kit.fleet import rollout_state as rs
from kit.fleet.device_update import DeviceUpdate, UpdateJob, roll_back_device
from kit.fleet.options import RolloutOptions
from kit.fleet.rollout_state import DeviceState
from kit.fleet.session import Retry, Session

NEW = "tiny-v2"


def _env(verb, result=None, code=None):
    if code:
        return {"schema_version": 1, "verb": verb, "ok": False, "error": {"code": code, "message": f"{verb} refused"}}
    return {"schema_version": 1, "verb": verb, "ok": True, "result": result}


class FakeAgent:
    """Runs `current`; activate switches, rollback --expect-current switches back."""

    def __init__(self, current="tiny-v1", passes=True, refuse=None, push_fails=0):
        self.name, self.emulated = "dev0", False
        self.current, self.previous, self.passes, self.refuse = current, None, passes, refuse or set()
        self.push_fails, self.calls = push_fails, []

    def run_agent(self, args, timeout=900, on_stderr=None):
        verb = args[0]
        self.calls.append(verb)
        if verb in self.refuse:
            return _env(verb, code="disk_full")
        if verb == "status":
            cur = {"bundle_id": self.current, "path": f"/m/{self.current}"} if self.current else None
            return _env(verb, {"models": {"tiny": {"current": cur}}})
        if verb == "activate":
            self.previous, self.current = self.current, NEW
            return _env(verb, {"installed_path": f"/m/{NEW}", "changed": True})
        if verb == "bench":
            return _env(verb, {"reference_check": {"passed": self.passes, "reason": "outputs differ"},
                               "latency": {"p50_ms": 1.0}})
        if verb == "rollback":
            changed = self.current == args[args.index("--expect-current") + 1]
            if changed:
                self.current, self.previous = self.previous, self.current
            return _env(verb, {"changed": changed, "current": self.current})
        raise AssertionError(verb)

    def stage_bundle(self, bundle_path, progress=None):
        self.calls.append("push")
        if self.push_fails:
            self.push_fails -= 1
            raise LinkLost(self.name, "the connection dropped while pushing")
        return f"/staging/{NEW}"

    def close(self):
        pass


def _run(agent, state=None, stop=False, retries=1, fn=None):
    job = UpdateJob(NEW, "tiny", Path("/b"), RolloutOptions(retries=retries, health_runs=1), None, threading.Event())
    if stop:
        job.stop.set()
    record = state or DeviceState(device="dev0")
    events: list[dict] = []

    def emit(**f):
        events.append(f)
        for k, v in f.items():
            setattr(record, k, v)

    dev = Session(type("E", (), {"name": "dev0"})(), lambda e: agent, Retry(retries, 0.001, 0.001))
    fn = fn or (lambda job, dev, st, emit: DeviceUpdate(job, dev, st, emit).run())
    fn(job, dev, DeviceState(**record.to_dict()), emit)
    return record, events


def test_fresh_device_goes_through_every_step():
    agent = FakeAgent()
    d, events = _run(agent)
    assert [e["stage"] for e in events if "stage" in e] == ["status", "push", "activate", "gate", "done"]
    assert (d.status, d.stage, d.running_bundle_id, d.previous_bundle_id) == (rs.UPDATED, "done", NEW, "tiny-v1")
    assert agent.calls == ["status", "push", "activate", "bench"]


def test_device_already_on_the_version_is_unchanged():
    agent = FakeAgent(current=NEW)
    d, _ = _run(agent)
    assert (d.status, d.stage) == (rs.UNCHANGED, "done") and agent.calls == ["status"]


def test_resumed_at_the_gate_benches_what_runs_without_pushing():
    agent = FakeAgent(current=NEW)
    d, _ = _run(agent, DeviceState(device="dev0", stage="gate", status=rs.IN_PROGRESS, previous_bundle_id="tiny-v1"))
    assert d.status == rs.UPDATED and agent.calls == ["status", "bench"]
    # ... and refuses to bench a version that is not current.
    other = FakeAgent(current="tiny-v1")
    d, _ = _run(other, DeviceState(device="dev0", stage="gate", status=rs.IN_PROGRESS))
    assert d.status == rs.FAILED and "not_current" in d.error and "bench" not in other.calls


def test_resumed_at_activate_pushes_again_then_switches():
    agent = FakeAgent()
    d, _ = _run(agent, DeviceState(device="dev0", stage="activate", status=rs.IN_PROGRESS, previous_bundle_id="tiny-v1"))
    assert d.status == rs.UPDATED and agent.calls == ["push", "activate", "bench"]


def test_failed_gate_switches_back_and_is_not_retried():
    agent = FakeAgent(passes=False)
    d, _ = _run(agent, retries=3)
    assert (d.status, d.stage, d.running_bundle_id) == (rs.FAILED, "done", "tiny-v1")
    assert "reference check failed (outputs differ)" in d.error and "rolled back to tiny-v1" in d.error
    assert agent.calls.count("bench") == 1 and agent.current == "tiny-v1"


def test_stop_before_push_leaves_the_device_pending():
    agent = FakeAgent()
    d, events = _run(agent, DeviceState(device="dev0", stage="push", status=rs.PENDING), stop=True)
    assert events == [] and agent.calls == []  # stop set before it started: nothing at all
    job_stop_mid = FakeAgent()
    d, _ = _run(job_stop_mid, DeviceState(device="dev0", stage="push", status=rs.IN_PROGRESS, previous_bundle_id="tiny-v1"),
                fn=lambda job, dev, st, emit: (job.stop.set(), DeviceUpdate(job, dev, st, emit).push_and_activate()))
    assert d.status == rs.PENDING and job_stop_mid.calls == []


def test_link_lost_for_good_is_unreachable_and_keeps_what_is_known():
    agent = FakeAgent(push_fails=5)
    d, _ = _run(agent, retries=2)
    assert d.status == rs.UNREACHABLE and d.stage == "push" and d.running_bundle_id == "tiny-v1"
    assert d.error.startswith("unreachable after 2 retries (stage push): device dev0: the connection dropped")
    assert agent.calls.count("push") == 3 and agent.current == "tiny-v1"
    # A push that fails once is retried and the update completes.
    agent = FakeAgent(push_fails=1)
    assert _run(agent, retries=2)[0].status == rs.UPDATED


def test_refused_activation_fails_on_the_previous_version():
    agent = FakeAgent(refuse={"activate"})
    d, _ = _run(agent, retries=3)
    assert d.status == rs.FAILED and "activate failed [disk_full]" in d.error
    assert d.running_bundle_id == "tiny-v1" and agent.calls.count("activate") == 1


def test_roll_back_device_after_the_rollout_stopped():
    agent = FakeAgent(current=NEW)
    agent.previous = "tiny-v1"
    d, _ = _run(agent, DeviceState(device="dev0", stage="done", status=rs.UPDATED, running_bundle_id=NEW),
                fn=roll_back_device)
    assert (d.status, d.running_bundle_id) == (rs.ROLLED_BACK, "tiny-v1") and agent.current == "tiny-v1"
    refusing = FakeAgent(current=NEW, refuse={"rollback"})
    d, _ = _run(refusing, DeviceState(device="dev0", stage="gate", status=rs.FAILED, error="health gate: x"),
                fn=roll_back_device)
    assert d.status == rs.FAILED and d.error.startswith("health gate: x; rollback failed")
