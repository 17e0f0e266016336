"""Staged rollouts to real sshd devices on 127.0.0.1: canary, batches, health gate, rollback,
idempotent re-runs, faults (unreachable device, sshd killed during activation, host killed)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import threading
import time

import pytest
import yaml

from kit.errors import EdgeKitError
from kit.fleet import rollout_state as rs
from kit.fleet import fleet_status, rollback_group, rollout
from tests.fixtures_fleet import (assert_consistent, current_id, edgekit_cmd, fast_connect, fast_options,
                                  python_env)

pytestmark = pytest.mark.timeout(300)


def _roll(bundle, entries, store, **kw):
    opts = kw.pop("options", None) or fast_options()
    return rollout(bundle, entries, "lab", options=opts, store_path=store, connect=fast_connect, **kw)


def _old(entries, model="tiny"):
    return {e.name: current_id(e, model) for e in entries}


def test_rollout_canary_batches_then_idempotent_then_upgrade(fleet_sshd, fleet_bundles, tmp_path):
    entries = fleet_sshd(4)
    store = tmp_path / "results.db"
    seen = []
    r1 = _roll(fleet_bundles["v1"], entries, store, options=fast_options(canary=1, batch_size=2),
               progress=lambda d: seen.append((d.device, d.stage, d.status)))
    assert r1.status == rs.SUCCEEDED and r1.failures == 0, [(d.device, d.status, getattr(d, "error", None)) for d in r1.devices]
    assert [d.status for d in r1.devices] == [rs.UPDATED] * 4
    assert all(current_id(e, "tiny") == fleet_bundles["v1"].bundle_id for e in entries)
    # The canary finished before any batch device started.
    first_other = min(i for i, (dev, _, _) in enumerate(seen) if dev != "dev0")
    assert ("dev0", "done", rs.UPDATED) in seen[:first_other]

    # Same bundle again: nothing is pushed or switched, every device is "unchanged".
    r2 = _roll(fleet_bundles["v1"], entries, store)
    assert r2.rollout_id != r1.rollout_id and r2.status == rs.SUCCEEDED
    assert [d.status for d in r2.devices] == [rs.UNCHANGED] * 4

    # v2 on top: previous recorded, devices keep v1 as `previous`.
    old = _old(entries)
    r3 = _roll(fleet_bundles["v2"], entries, store, options=fast_options(canary=2, batch_size=3))
    assert r3.status == rs.SUCCEEDED, [(d.device, d.status, getattr(d, "error", None)) for d in r3.devices]
    assert all(d.previous_bundle_id == fleet_bundles["v1"].bundle_id for d in r3.devices)
    assert_consistent(r3, entries, "tiny", old)

    # `edgekit rollback --group` equivalent: every device back to v1; status shows it.
    rows = rollback_group(entries, "tiny", connect=fast_connect)
    assert all(r["ok"] and r["current"] == fleet_bundles["v1"].bundle_id for r in rows), rows
    st = fleet_status(entries, connect=fast_connect)
    assert all(r["models"]["tiny"]["current"]["bundle_id"] == fleet_bundles["v1"].bundle_id for r in st)
    assert all(r["models"]["tiny"]["previous"]["bundle_id"] == fleet_bundles["v2"].bundle_id for r in st)


def test_failed_health_gate_stops_at_canary_and_rolls_back(fleet_sshd, fleet_bundles, tmp_path):
    entries = fleet_sshd(3)
    store = tmp_path / "results.db"
    assert _roll(fleet_bundles["v1"], entries, store).status == rs.SUCCEEDED
    old = _old(entries)
    r = _roll(fleet_bundles["bad"], entries, store, options=fast_options(canary=1, batch_size=2, max_failures=0))
    assert r.status == rs.STOPPED
    by = {d.device: d for d in r.devices}
    assert by["dev0"].status == rs.FAILED and "reference check failed" in by["dev0"].error
    assert by["dev0"].stage == "done" and "rolled back to" in by["dev0"].error  # failed gate: switched back, not retried
    assert by["dev1"].status == by["dev2"].status == rs.SKIPPED
    assert_consistent(r, entries, "tiny", old)
    assert all(current_id(e, "tiny") == fleet_bundles["v1"].bundle_id for e in entries)


def test_latency_budget_and_failure_threshold(fleet_sshd, fleet_bundles, tmp_path):
    """With max_failures=1 one failure is tolerated; the second stops the rollout and rolls back
    the devices it had already switched."""
    entries = fleet_sshd(4)
    store = tmp_path / "results.db"
    old = _old(entries)
    # An impossible latency budget fails every gate on latency, not on the reference check.
    r = _roll(fleet_bundles["v1"], entries, store,
              options=fast_options(canary=1, batch_size=1, max_failures=1, latency_budget_ms=0.0001))
    assert r.status == rs.STOPPED and r.failures == 2
    by = {d.device: d for d in r.devices}
    assert "exceeds the budget" in by["dev0"].error and "exceeds the budget" in by["dev1"].error
    assert by["dev2"].status == by["dev3"].status == rs.SKIPPED
    assert_consistent(r, entries, "tiny", old)
    assert all(current_id(e, "tiny") is None for e in entries)  # first install rolled back: nothing runs


def test_threshold_rolls_back_already_switched_devices(fleet_sshd, fleet_bundles, tmp_path):
    """Healthy devices switched before the threshold tripped go back to their previous version."""
    entries = fleet_sshd(3)
    store = tmp_path / "results.db"
    assert _roll(fleet_bundles["v1"], entries, store).status == rs.SUCCEEDED
    old = _old(entries)
    # dev2 loses its sshd before the rollout: dev0 and dev1 switch to v2, dev2 is unreachable,
    # failures (1) > max_failures (0) -> dev0 and dev1 are rolled back to v1.
    fleet_sshd.server("dev2").stop()
    r = _roll(fleet_bundles["v2"], entries, store, options=fast_options(canary=1, batch_size=2, max_failures=0, retries=1))
    assert r.status == rs.STOPPED
    by = {d.device: d for d in r.devices}
    assert by["dev0"].status == rs.ROLLED_BACK and by["dev2"].status == rs.UNREACHABLE
    assert by["dev1"].status in (rs.ROLLED_BACK, rs.SKIPPED)
    fleet_sshd.server("dev2").start()
    assert_consistent(r, entries, "tiny", old)
    assert all(current_id(e, "tiny") == fleet_bundles["v1"].bundle_id for e in entries)


def test_unreachable_from_start_is_tolerated_and_recorded(fleet_sshd, fleet_bundles, tmp_path):
    entries = fleet_sshd(3)
    store = tmp_path / "results.db"
    fleet_sshd.server("dev1").stop()  # the port is closed: connection refused on every try
    r = _roll(fleet_bundles["v1"], entries, store, options=fast_options(canary=1, batch_size=2, max_failures=1, retries=2))
    assert r.status == rs.SUCCEEDED and r.failures == 1
    by = {d.device: d for d in r.devices}
    assert by["dev1"].status == rs.UNREACHABLE and by["dev1"].attempts == 2
    assert r.runs(by["dev1"]) == "previous"
    assert by["dev0"].status == by["dev2"].status == rs.UPDATED
    fleet_sshd.server("dev1").start()
    assert current_id(entries[1], "tiny") is None
    # The stored record agrees with the returned one.
    with rs.RolloutState(store) as st:
        rec = st.get(r.rollout_id)
    assert rec.status == rs.SUCCEEDED and {d.device: d.status for d in rec.devices} == {d.device: d.status for d in r.devices}


def test_sshd_killed_during_activation_recovers(fleet_sshd, fleet_bundles, tmp_path):
    """dev1's sshd dies (listener and sessions) as its activation starts and comes back 1.5 s
    later: the activation is retried (it is idempotent on the device) and the device ends on the
    new version, with the retry counted."""
    entries = fleet_sshd(2)
    store = tmp_path / "results.db"
    assert _roll(fleet_bundles["v1"], entries, store).status == rs.SUCCEEDED
    old = _old(entries)
    server = fleet_sshd.server("dev1")
    killed = threading.Event()

    def on_progress(d):
        if d.device == "dev1" and d.stage == "activate" and not killed.is_set():
            killed.set()
            server.kill()
            threading.Timer(1.5, server.start).start()

    r = _roll(fleet_bundles["v2"], entries, store, options=fast_options(canary=1, batch_size=1), progress=on_progress)
    assert killed.is_set()
    by = {d.device: d for d in r.devices}
    assert r.status == rs.SUCCEEDED, r.to_dict()
    assert by["dev1"].status == rs.UPDATED and by["dev1"].attempts >= 1
    assert_consistent(r, entries, "tiny", old)


def test_new_rollout_refused_while_one_is_unfinished(fleet_sshd, fleet_bundles, tmp_path):
    entries = fleet_sshd(1)
    store = tmp_path / "results.db"
    with rs.RolloutState(store) as st:
        rid = st.create(fleet_bundles["v1"].bundle_id, "tiny", "lab", ["dev0"], {})
    with pytest.raises(EdgeKitError, match=f"rollout {rid} .* unfinished.*--resume"):
        _roll(fleet_bundles["v2"], entries, store)
    with pytest.raises(EdgeKitError, match="resume with that bundle"):
        _roll(fleet_bundles["v2"], entries, store, resume=True)
    r = _roll(fleet_bundles["v1"], entries, store, resume=True)
    assert r.rollout_id == rid and r.status == rs.SUCCEEDED


def test_host_killed_mid_rollout_then_resumed(fleet_sshd, fleet_bundles, tmp_path):
    """`edgekit rollout` is SIGKILLed once a device has switched; `--resume` finishes the same
    rollout, and every device ends on the new version exactly once (nothing switched twice)."""
    entries = fleet_sshd(4)
    inv = tmp_path / "devices.yaml"
    inv.write_text(yaml.safe_dump({"devices": {e.name: {**e.to_dict(), "groups": ["lab"]} for e in entries}}))
    store = tmp_path / "results.db"
    env = {**python_env(), "EDGEKIT_RESULTS": str(store)}
    args = ["rollout", str(fleet_bundles["v1"].path), "--group", "lab", "--inventory", str(inv), "--canary", "1",
            "--batch-size", "1", "--health-runs", "3"]
    proc = subprocess.Popen(edgekit_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            if store.exists():
                try:
                    with sqlite3.connect(store) as db:
                        n = db.execute("SELECT COUNT(*) FROM rollout_devices WHERE status = 'updated'").fetchone()[0]
                except sqlite3.Error:
                    n = 0
                if n >= 1:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.05)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"rollout ended before it could be killed: {proc.stderr.read().decode()[-800:]}"
    with rs.RolloutState(store) as st:
        rec = st.unfinished(None, "lab")
    assert rec is not None and rec.status == rs.RUNNING
    done_before = {d.device for d in rec.devices if d.status == rs.UPDATED}
    assert 1 <= len(done_before) < 4

    # Without --resume a new rollout is refused; with it the same rollout completes.
    refused = subprocess.run(edgekit_cmd(*args), env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    resumed = subprocess.run(edgekit_cmd(*args, "--resume", "--json"), env=env, capture_output=True, text=True, timeout=200)
    assert resumed.returncode == 0, resumed.stderr[-800:]
    with rs.RolloutState(store) as st:
        final = st.get(rec.id)
    assert final.status == rs.SUCCEEDED
    assert all(d.status == rs.UPDATED for d in final.devices), final.to_dict()
    for e in entries:
        assert current_id(e, "tiny") == fleet_bundles["v1"].bundle_id
    # Devices done before the kill were not touched again (their records were not rewritten).
    for d in final.devices:
        if d.device in done_before:
            assert d.updated == next(x.updated for x in rec.devices if x.device == d.device)


def test_cli_rollout_status_rollback(fleet_sshd, fleet_bundles, tmp_path, capsys, monkeypatch):
    from kit.cli import main

    entries = fleet_sshd(2)
    inv = tmp_path / "devices.yaml"
    inv.write_text(yaml.safe_dump({"devices": {e.name: {**e.to_dict(), "groups": ["lab"]} for e in entries}}))
    monkeypatch.setenv("EDGEKIT_RESULTS", str(tmp_path / "results.db"))
    common = ["--inventory", str(inv)]
    for b in ("v1", "v2"):
        assert main(["rollout", str(fleet_bundles[b].path), "--group", "lab", "--health-runs", "2", *common]) == 0
    assert "succeeded" in capsys.readouterr().out
    assert main(["status", "lab", "--json", *common]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["device"]: r["models"]["tiny"]["current"]["bundle_id"] for r in rows} == \
        {e.name: fleet_bundles["v2"].bundle_id for e in entries}
    assert main(["rollback", "--group", "lab", *common]) == 0  # model name from the last rollout
    out = capsys.readouterr().out
    assert out.count("rolled back") == 2 and fleet_bundles["v1"].bundle_id in out
    # A bad gate through the CLI: exit 1, devices keep v1.
    assert main(["rollout", str(fleet_bundles["bad"].path), "--group", "lab", "--health-runs", "2", *common]) == 1
    assert all(current_id(e, "tiny") == fleet_bundles["v1"].bundle_id for e in entries)
    # Bad input: one line, exit 2.
    assert main(["rollout", str(tmp_path / "nope"), "--group", "lab", *common]) == 2
    assert "not a bundle" in capsys.readouterr().err
