"""Liveness on frozen devices (issue 17): a device whose sshd session tree is SIGSTOPped mid-bench
or mid-push ends in HeartbeatLost (naming the heartbeat, the device and the step) long before the
rollout's --deadline-s 600; the batch goes on or stops per --max-failures; after SIGCONT no agent
process of that run is left on the device (the agent notices its session is gone and exits, its
sandboxed child with it). Real sshd devices, the real CLI in a subprocess under a 90 s guard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

import pytest
import yaml

from tests.fixtures_fleet import current_id, edgekit_cmd, make_bundle, python_env

pytestmark = pytest.mark.timeout(400)
GUARD_S = 90  # the test's own limit for a rollout told --deadline-s 600


def _inventory(tmp_path, entries):
    inv = tmp_path / "devices.yaml"
    inv.write_text(yaml.safe_dump({"devices": {e.name: {**e.to_dict(), "groups": ["lab"]} for e in entries}}))
    return ["--inventory", str(inv)]


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def agent_pids(home: str) -> list[int]:
    """Processes of the agent (and its bench child) working for this device: its EDGEKIT_HOME marker."""
    marker = f"EDGEKIT_HOME={home}".encode()
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and marker in _read(f"/proc/{d}/environ").split(b"\0") \
                and b"device_agents" in _read(f"/proc/{d}/cmdline"):
            out.append(int(d))
    return out


def _freeze_when(server, predicate, frozen: list, stop: threading.Event) -> threading.Thread:
    """Watch the device's sshd session tree; SIGSTOP all of it once a process matches."""
    def watch():
        while not stop.is_set():
            for pid in server.session_pids():
                if predicate(pid):
                    frozen.extend(server.freeze())
                    return
            time.sleep(0.005)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


def _rollout(bundle, inv, tmp_path, *extra) -> tuple[int, dict]:
    env = {**python_env(), "EDGEKIT_RESULTS": str(tmp_path / "results.db")}
    p = subprocess.run(edgekit_cmd("rollout", str(bundle.path), "--group", "lab", "--deadline-s", "600",
                                   "--retries", "1", "--json", *extra, *inv),
                       capture_output=True, text=True, env=env, timeout=GUARD_S)
    assert p.stdout.strip(), p.stderr[-2000:]
    return p.returncode, json.loads(p.stdout)


def _thaw_and_wait_gone(frozen: list[int], home: str) -> list[int]:
    # Deepest first: were sshd continued first, it would exit while the agent is still stopped, and
    # the kernel's orphaned-process-group rule (SIGHUP to a stopped orphaned group) would kill the
    # agent for us: the agent must go on its own.
    for pid in reversed(frozen):
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    for _ in range(300):  # the agent's next heartbeat write fails once sshd has closed the session
        left = agent_pids(home)
        if not left:
            return []
        time.sleep(0.1)
    return agent_pids(home)


def test_frozen_mid_bench_fails_that_device_and_the_batch_goes_on(fleet_sshd, fleet_bundles, tmp_path):
    entries = fleet_sshd(3)
    inv = _inventory(tmp_path, entries)
    v1, v2 = fleet_bundles["v1"], fleet_bundles["v2"]
    rc, doc = _rollout(v1, inv, tmp_path, "--health-runs", "2")
    assert rc == 0 and doc["status"] == "succeeded", doc

    victim = fleet_sshd.server(entries[1])
    frozen, stop = [], threading.Event()
    in_bench = lambda pid: b"device_agents.bench" in _read(f"/proc/{pid}/cmdline")  # noqa: E731  the timing child
    watcher = _freeze_when(victim, in_bench, frozen, stop)
    try:
        rc, doc = _rollout(v2, inv, tmp_path, "--canary", "1", "--batch-size", "2", "--max-failures", "1",
                           "--health-runs", "100000")
    finally:
        stop.set()
        watcher.join(5)
        left = _thaw_and_wait_gone(frozen, str(victim.home))
    assert frozen, "the device was never frozen: its health gate did not start"
    rows = {d["device"]: d for d in doc["devices"]}
    bad = rows[entries[1].name]
    assert bad["status"] == "failed", bad
    for word in ("no heartbeat", f"device {entries[1].name}", "bench", "heartbeat_timeout_s=20"):
        assert word in bad["error"], bad["error"]
    # One failure is within --max-failures 1: the rollout went on and the others run v2.
    assert rc == 0 and doc["status"] == "succeeded" and doc["failures"] == 1, doc
    assert [rows[e.name]["status"] for e in (entries[0], entries[2])] == ["updated", "updated"]
    assert left == [], f"agent processes still running on {entries[1].name} after SIGCONT: {left}"
    # Nothing half-activated: the frozen device was switched back (over a new session) to v1.
    assert current_id(entries[1], "tiny") == v1.bundle_id
    assert current_id(entries[0], "tiny") == current_id(entries[2], "tiny") == v2.bundle_id


def test_frozen_mid_push_stops_the_rollout_per_max_failures(fleet_sshd, fleet_keys, tmp_path):
    from kit.devices import SshDevice

    entries = fleet_sshd(2, forced_command=True)  # no SFTP: the bundle streams into the agent's receive
    for e in entries:
        with SshDevice(fleet_sshd.server(e).entry(forced=False), allow_agent=False) as admin:
            admin.ensure_agent()
    inv = _inventory(tmp_path, entries)
    big = make_bundle(tmp_path / "huge", "huge", hidden=24000, seed=5)  # ~25 MB: more than the link buffers

    victim = fleet_sshd.server(entries[0])
    frozen, stop = [], threading.Event()
    receiving = lambda pid: b"SSH_ORIGINAL_COMMAND=receive" in _read(f"/proc/{pid}/environ")  # noqa: E731
    watcher = _freeze_when(victim, receiving, frozen, stop)
    try:
        rc, doc = _rollout(big, inv, tmp_path, "--canary", "1", "--max-failures", "0", "--health-runs", "2")
    finally:
        stop.set()
        watcher.join(5)
        left = _thaw_and_wait_gone(frozen, str(victim.home))
    assert frozen, "the device was never frozen: the push did not start"
    bad, other = doc["devices"]
    assert bad["device"] == entries[0].name and bad["status"] == "failed", bad
    for word in ("no heartbeat", f"device {entries[0].name}", "push of bundle", "receive"):
        assert word in bad["error"], bad["error"]
    # --max-failures 0: the canary's failure stops the rollout; the batch never starts.
    assert rc == 1 and doc["status"] == "stopped" and other["status"] == "skipped", doc
    assert left == [], f"agent processes still running on {entries[0].name} after SIGCONT: {left}"
    assert not (victim.home / "bundles" / big.bundle_id).exists()  # nothing half-installed
    assert current_id(fleet_sshd.server(entries[0]).entry(forced=False), "huge") is None


def test_frozen_mid_bench_then_thawed_leaves_no_agent_running(fleet_sshd, fleet_keys, tmp_path):
    """A bench with minutes of work left when its device freezes: HeartbeatLost in ~20 s; after
    SIGCONT the agent finds its session gone and kills the timing child instead of finishing."""
    from kit.devices import SshDevice
    from kit.errors import HeartbeatLost

    entry, = fleet_sshd(1)
    server = fleet_sshd.server(entry)
    slow = make_bundle(tmp_path / "slow", "slow", hidden=6000, seed=6)
    with SshDevice(entry, allow_agent=False) as dev:
        remote = dev.stage_bundle(slow.path)
    frozen, stop, got = [], threading.Event(), {}
    in_bench = lambda pid: b"device_agents.bench" in _read(f"/proc/{pid}/cmdline")  # noqa: E731
    watcher = _freeze_when(server, in_bench, frozen, stop)

    def bench():
        try:
            with SshDevice(entry, allow_agent=False) as dev:
                # ~90 s of timing (frozen time counts): still far from done when the device is thawed.
                opts = {"runs": 100, "min_time_s": 90, "max_runs": 5_000_000, "deadline_s": 600}
                got["doc"] = dev.run_agent(["bench", "--bundle", remote, "--opts", json.dumps(opts)], timeout=720)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            got["error"] = e

    t = threading.Thread(target=bench, daemon=True)
    t.start()
    t.join(GUARD_S)
    stop.set()
    watcher.join(5)
    try:
        assert not t.is_alive(), f"the bench of a frozen device still waits after {GUARD_S} s"
        assert frozen, "the device was never frozen"
        err = got.get("error")
        assert isinstance(err, HeartbeatLost) and not err.retryable, got
        assert entry.name in str(err) and "bench" in err.step and "no heartbeat" in str(err)
        assert agent_pids(str(server.home)), "the frozen agent should still exist before the thaw"
    finally:
        left = _thaw_and_wait_gone(frozen, str(server.home))
    assert left == [], f"agent processes of the abandoned bench still run after SIGCONT: {left}"
