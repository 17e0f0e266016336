"""`edgekit ansible export | collect` with the real ansible-playbook against 3 real sshd devices
(strict host keys through each device's known_hosts): canary then batch; a second run sends
nothing and switches nothing; a host failing its health gate is rolled back and the play stops
per max_fail_percentage; the results store gets the rollout record and the gate measurements."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.fixtures_fleet import current_id

pytestmark = pytest.mark.timeout(1200)
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


@pytest.fixture
def have_ansible():
    from kit.ansible.run import ansible_playbook
    from kit.errors import EdgeKitError

    try:
        return ansible_playbook()
    except EdgeKitError as e:
        pytest.skip(f"missing host piece: {e}")


def _inventory(tmp_path, entries, host_vars=None):
    inv = tmp_path / "devices.yaml"
    devices = {e.name: {**e.to_dict(), "groups": ["lab"], "vars": (host_vars or {}).get(e.name, {})} for e in entries}
    inv.write_text(yaml.safe_dump({"devices": devices}))
    return ["--inventory", str(inv)]


def _play(out) -> tuple[int, dict, str]:
    from kit.ansible.run import run_playbook

    p = run_playbook(out, capture=True, timeout=420)  # generous: a loaded 2-core CI box
    recap = {m[0]: {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}
             for m in RECAP.findall(p.stdout)}
    return p.returncode, recap, p.stdout + p.stderr


def _records(out) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in (out / "results").glob("*.json")}


def _collect(main, capsys, out, db) -> dict:
    assert main(["ansible", "collect", str(out), "--results", str(db), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_exported_playbook_canary_batch_idempotent_gate_failure(fleet_sshd, fleet_bundles, tmp_path, capsys,
                                                                have_ansible):
    from kit.cli import main
    from kit.results.store import ResultsStore

    entries = fleet_sshd(3)
    names = [e.name for e in entries]
    db = tmp_path / "results.db"
    v1, v2 = fleet_bundles["v1"], fleet_bundles["v2"]
    out1 = tmp_path / "v1-play"
    assert main(["ansible", "export", str(v1.path), "--group", "lab", "--out", str(out1), "--canary", "1",
                 "--batch-size", "2", "--health-runs", "3", *_inventory(tmp_path, entries)]) == 0
    capsys.readouterr()
    # The play runs the agent's verbs as argv and trusts host keys strictly, nothing else.
    tasks = (out1 / "roles" / "edgekit_rollout" / "tasks" / "main.yml").read_text()
    assert "ansible.builtin.shell" not in tasks and "StrictHostKeyChecking=yes" in (out1 / "inventory.yml").read_text()
    assert yaml.safe_load((out1 / "rollout.yml").read_text())[0]["serial"] == [1, 2]
    # Two archives, not a file tree: the agent and the bundle each travel as one tar.
    files = out1 / "roles" / "edgekit_rollout" / "files"
    assert sorted(p.name for p in files.iterdir()) == ["agent.tar", "bundle.tar", "trusted_keys"]
    assert "ansible.builtin.unarchive" not in tasks and "src: agent.tar" in tasks and "src: bundle.tar" in tasks

    # 1) canary, then the batch of two; every host updated and gated.
    rc, recap, log = _play(out1)
    assert rc == 0, log[-3000:]
    recs = _records(out1)
    assert recs[names[0]]["play_batch"] == [names[0]]
    assert recs[names[1]]["play_batch"] == recs[names[2]]["play_batch"] == names[1:]
    assert all(recs[n]["outcome"] == "updated" and recs[n]["copied"]["bundle"] for n in names)
    summary = _collect(main, capsys, out1, db)
    assert summary["status"] == "succeeded" and summary["measurements"] == 3
    assert [(d["device"], d["status"]) for d in summary["devices"]] == [(n, "updated") for n in names]
    with ResultsStore(db) as store:
        rows = store.measurements(summary["run_id"])
    assert sorted(r["device"] for r in rows) == names and all(r["reference_passed"] for r in rows)
    assert all(current_id(e, "tiny") == v1.bundle_id for e in entries)

    # 2) the same play again: nothing sent, nothing switched (the recap's changed counts all tasks).
    rc, recap, log = _play(out1)
    assert rc == 0 and set(recap) == set(names), log[-3000:]
    assert all(recap[n]["changed"] == 0 and recap[n]["failed"] == 0 for n in names), recap
    recs = _records(out1)
    assert all(recs[n]["outcome"] == "unchanged" and recs[n]["copied"] == {"agent": False, "bundle": False}
               and recs[n]["agent"]["activate"] is None for n in names), recs
    assert _collect(main, capsys, out1, db)["status"] == "succeeded"

    # 3) v2 with an impossible latency budget on the canary only (an Ansible host var): its gate
    #    fails, it is rolled back, and max_fail_percentage 0 stops the play before the batch.
    out2 = tmp_path / "v2-play"
    inv = _inventory(tmp_path, entries, {names[0]: {"edgekit_latency_budget_ms": 1e-6}})
    assert main(["ansible", "export", str(v2.path), "--group", "lab", "--out", str(out2), "--canary", "1",
                 "--batch-size", "2", "--health-runs", "3", "--max-fail-percentage", "0", *inv]) == 0
    capsys.readouterr()
    rc, recap, log = _play(out2)
    assert rc != 0 and recap[names[0]]["failed"] == 1, log[-3000:]
    assert names[1] not in recap and names[2] not in recap  # the batch never started
    assert set(_records(out2)) == {names[0]}
    summary = _collect(main, capsys, out2, db)
    by = {d["device"]: d for d in summary["devices"]}
    assert summary["status"] == "stopped" and summary["measurements"] == 1
    assert by[names[0]]["status"] == "failed" and f"rolled back to {v1.bundle_id}" in by[names[0]]["error"]
    assert by[names[0]]["running_bundle_id"] == v1.bundle_id
    assert by[names[1]]["status"] == by[names[2]]["status"] == "skipped"
    assert all(current_id(e, "tiny") == v1.bundle_id for e in entries)  # nothing half-activated anywhere
    # Collected once: the records moved aside, a second collect has nothing to count twice.
    assert (out2 / "results" / f"collected-{summary['rollout_id']}" / f"{names[0]}.json").is_file()
    assert main(["ansible", "collect", str(out2), "--results", str(db)]) == 2


def _unpack(tar, dest, sha, pins):
    import subprocess
    import sys

    from kit.ansible.archive import UNPACK_AGENT

    p = subprocess.run([sys.executable, "-I", "-c", UNPACK_AGENT, str(tar), str(dest), sha, json.dumps(pins)],
                       capture_output=True, text=True, timeout=60, cwd="/")
    return p.returncode, json.loads(p.stdout.strip().splitlines()[-1])


def test_agent_archive_is_deterministic_and_unpacked_by_the_checked_extraction(tmp_path):
    """The agent tar is byte-identical across exports; the device-side unpack (run here with an
    isolated Python, as on a device without the kit) installs it, reports no change the second
    time, and refuses a tampered archive or a link member, leaving nothing half-written."""
    import hashlib
    import tarfile
    from pathlib import Path

    import device_agents
    from kit.ansible.archive import UNPACK_AGENT, agent_tar

    assert not any(m in UNPACK_AGENT for m in ("{{", "{%", "{#"))  # Ansible must not template it
    pkg = Path(device_agents.__file__).parent
    sha, pins = agent_tar(pkg, tmp_path / "a.tar")
    assert agent_tar(pkg, tmp_path / "b.tar")[0] == sha and (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert "device_agents/tarball.py" in pins and not any("__pycache__" in n for n in pins)

    dest = tmp_path / "home" / "agent" / "v"
    assert _unpack(tmp_path / "a.tar", dest, sha, pins) == (0, {"ok": True, "changed": True})
    for name, meta in pins.items():
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == meta["sha256"]
    assert _unpack(tmp_path / "a.tar", dest, sha, pins) == (0, {"ok": True, "changed": False})
    (dest / "device_agents" / "agent.py").write_text("tampered = True\n")  # a damaged install is replaced
    assert _unpack(tmp_path / "a.tar", dest, sha, pins) == (0, {"ok": True, "changed": True})
    assert hashlib.sha256((dest / "device_agents" / "agent.py").read_bytes()).hexdigest() == pins["device_agents/agent.py"]["sha256"]

    # A tar that is not the exported one: refused before any of it is read.
    rc, doc = _unpack(tmp_path / "a.tar", tmp_path / "x", "0" * 64, pins)
    assert rc == 1 and not doc["ok"] and "sha256 differs" in doc["error"] and not (tmp_path / "x").exists()
    # A tar whose digest matches (the exporter was fooled) but which holds a link: the agent's screening refuses it.
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf, tarfile.open(tmp_path / "a.tar") as good:
        for m in good.getmembers():
            tf.addfile(m, good.extractfile(m))
        link = tarfile.TarInfo("device_agents/escape.py")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    rc, doc = _unpack(evil, tmp_path / "y", hashlib.sha256(evil.read_bytes()).hexdigest(), pins)
    assert rc == 1 and "tar_link" in doc["error"] and not (tmp_path / "y").exists() and not (tmp_path / "y.new").exists()
