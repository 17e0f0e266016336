"""Device-side fleet verbs (device_agents/install.py): activate, rollback, status, run as the
real agent process with its own EDGEKIT_HOME."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def agent(tmp_path, fleet_keys):
    home = tmp_path / "home"
    env = {**os.environ, "EDGEKIT_HOME": str(home), "EDGEKIT_TRUSTED_KEYS": str(fleet_keys.public), "PYTHONPATH": str(ROOT)}

    def run(*args) -> dict:
        p = subprocess.run([sys.executable, "-m", "device_agents", *map(str, args)], capture_output=True, text=True,
                           env=env, timeout=120, cwd=str(tmp_path))
        return json.loads(p.stdout.strip().splitlines()[-1])

    run.home = home
    return run


def _model_dir(agent, name="tiny") -> Path:
    return agent.home / "models" / name


def test_activate_switch_idempotent_rollback(agent, fleet_bundles):
    v1, v2 = fleet_bundles["v1"], fleet_bundles["v2"]
    r = agent("activate", "--bundle", v1.path, "--name", "tiny")
    assert r["ok"] and r["result"]["changed"] and r["result"]["previous"] is None
    d = _model_dir(agent)
    assert os.readlink(d / "current") == v1.bundle_id and not (d / "previous").exists()
    again = agent("activate", "--bundle", v1.path, "--name", "tiny")
    assert again["ok"] and not again["result"]["changed"]

    r = agent("activate", "--bundle", v2.path, "--name", "tiny")
    assert r["result"]["previous"] == v1.bundle_id
    assert (os.readlink(d / "current"), os.readlink(d / "previous")) == (v2.bundle_id, v1.bundle_id)
    st = agent("status")["result"]["models"]["tiny"]
    assert st["current"]["bundle_id"] == v2.bundle_id and st["current"]["present"]
    assert st["previous"]["bundle_id"] == v1.bundle_id and sorted(st["versions"]) == sorted([v1.bundle_id, v2.bundle_id])
    # The installed copy is a complete, verified bundle of its own (the staged source may go away).
    assert agent("verify", "--bundle", d / v2.bundle_id)["ok"]

    # Guarded rollback: only from the named version, so a repeated call changes nothing.
    assert not agent("rollback", "--name", "tiny", "--expect-current", v1.bundle_id)["result"]["changed"]
    r = agent("rollback", "--name", "tiny", "--expect-current", v2.bundle_id)["result"]
    assert r["changed"] and r["current"] == v1.bundle_id
    assert not agent("rollback", "--name", "tiny", "--expect-current", v2.bundle_id)["result"]["changed"]
    assert os.readlink(d / "current") == v1.bundle_id
    # The rolled-back version is still accepted by the agent's replay protection.
    assert agent("verify", "--bundle", d / "current")["ok"]
    # Re-activating the newer bundle after a rollback is allowed (not a replay).
    assert agent("activate", "--bundle", v2.path, "--name", "tiny")["result"]["current"] == v2.bundle_id


def test_older_sequence_is_refused_as_replay(agent, fleet_bundles):
    v1, v2 = fleet_bundles["v1"], fleet_bundles["v2"]
    assert agent("activate", "--bundle", v2.path, "--name", "tiny")["ok"]
    r = agent("activate", "--bundle", v1.path, "--name", "tiny")
    assert not r["ok"] and r["error"]["code"] == "replayed"
    assert os.readlink(_model_dir(agent) / "current") == v2.bundle_id


def test_tampered_or_unsigned_bundle_installs_nothing(agent, fleet_bundles, tmp_path):
    v1 = fleet_bundles["v1"]
    assert agent("activate", "--bundle", v1.path, "--name", "tiny")["ok"]
    bad = tmp_path / "tampered"
    shutil.copytree(fleet_bundles["v2"].path, bad)
    model = bad / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    r = agent("activate", "--bundle", bad, "--name", "tiny")
    assert not r["ok"] and r["error"]["code"] == "hash_mismatch"
    unsigned = tmp_path / "unsigned"
    shutil.copytree(fleet_bundles["v2"].path, unsigned)
    (unsigned / "manifest.sig").unlink()
    r = agent("activate", "--bundle", unsigned, "--name", "tiny")
    assert not r["ok"] and r["error"]["code"] == "unsigned"
    d = _model_dir(agent)
    assert os.readlink(d / "current") == v1.bundle_id
    assert {p.name for p in d.iterdir() if p.name != ".lock"} == {v1.bundle_id, "current"}


def test_leftovers_of_a_crashed_activation_are_harmless(agent, fleet_bundles):
    """A host or device killed mid-activation leaves at most a temp folder / temp symlink."""
    v1, v2 = fleet_bundles["v1"], fleet_bundles["v2"]
    assert agent("activate", "--bundle", v1.path, "--name", "tiny")["ok"]
    d = _model_dir(agent)
    (d / f".{v2.bundle_id}.tmp-99999").mkdir()
    (d / f".{v2.bundle_id}.tmp-99999" / "model.onnx").write_bytes(b"half")
    os.symlink(v2.bundle_id, d / ".current.tmp-99999")
    assert agent("status")["result"]["models"]["tiny"]["current"]["bundle_id"] == v1.bundle_id
    assert agent("activate", "--bundle", v2.path, "--name", "tiny")["result"]["current"] == v2.bundle_id
    assert agent("verify", "--bundle", d / "current")["ok"]


def test_concurrent_activations_serialise(agent, fleet_bundles):
    v1, v2 = fleet_bundles["v1"], fleet_bundles["v2"]
    with ThreadPoolExecutor(2) as pool:
        docs = list(pool.map(lambda b: agent("activate", "--bundle", b.path, "--name", "tiny"), [v1, v2]))
    d = _model_dir(agent)
    cur = os.readlink(d / "current")
    ok = [x for x in docs if x["ok"]]
    assert ok and cur in (v1.bundle_id, v2.bundle_id)
    # Whatever order they ran in, current and previous name complete installed versions.
    st = agent("status")["result"]["models"]["tiny"]
    assert st["current"]["present"] and (st["previous"] is None or st["previous"]["present"])


@pytest.mark.parametrize("args,code", [
    (["activate", "--bundle", "/nonexistent", "--name", "tiny"], "no_bundle"),
    (["activate", "--bundle", "{v1}", "--name", "../etc"], "bad_name"),
    (["rollback", "--name", "never-installed"], "not_installed"),
    (["activate", "--bundle", "{v1}"], "bad_arguments"),
])
def test_bad_requests_get_coded_errors(agent, fleet_bundles, args, code):
    args = [a.replace("{v1}", str(fleet_bundles["v1"].path)) for a in args]
    r = agent(*args)
    assert not r["ok"] and r["error"]["code"] == code, r


def test_rollback_of_first_install_leaves_no_current(agent, fleet_bundles):
    v1 = fleet_bundles["v1"]
    assert agent("activate", "--bundle", v1.path, "--name", "tiny")["ok"]
    r = agent("rollback", "--name", "tiny")["result"]
    assert r["changed"] and r["current"] is None
    assert agent("status")["result"]["models"]["tiny"]["current"] is None
