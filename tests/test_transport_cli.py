"""`edgekit devices add/list/trust/check` and `edgekit bench --device` against a real sshd."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess

import pytest

from kit.cli import main
from kit.config import config_dir


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    if (config_dir() / "keys").is_dir():  # the signing keys the session's bundles were signed with
        shutil.copytree(config_dir() / "keys", cfg / "keys")
    monkeypatch.setenv("EDGEKIT_CONFIG_DIR", str(cfg))
    monkeypatch.setenv("EDGEKIT_RESULTS", str(tmp_path / "results.db"))
    return cfg


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, " ".join((out.out + out.err).split())


def test_enrol_trust_check_and_bench(cli_env, sshd_factory, onnx_bundle, capsys):
    entry, = sshd_factory(1)
    server = sshd_factory.server(entry)
    code, out = run(capsys, "devices", "add", "pi", "127.0.0.1", "--port", entry.port, "--key", entry.key,
                    "--python", entry.python, "--home", entry.home, "--group", "lab", "--kind", "rpi5")
    assert code == 0 and (cli_env / "devices.yaml").is_file()
    code, out = run(capsys, "devices", "list")
    assert code == 0 and "pi" in out and "rpi5" in out

    code, out = run(capsys, "devices", "check", "lab")  # strict by default: the host key is not known yet
    assert code == 1 and "not known" in out and "edgekit devices trust pi" in out and "1 of 1 device(s) failed" in out

    fp = subprocess.run(["ssh-keygen", "-lf", f"{server.host_key}.pub"], capture_output=True, text=True).stdout.split()[1]
    code, out = run(capsys, "devices", "trust", "pi", "--fingerprint", "SHA256:" + "A" * 43)
    assert code == 2 and "differs" in out and not (cli_env / "known_hosts").exists()
    code, out = run(capsys, "devices", "trust", "pi", "--fingerprint", fp)
    assert code == 0 and fp in out
    assert f"[127.0.0.1]:{entry.port} ssh-ed25519 " in (cli_env / "known_hosts").read_text()
    code, out = run(capsys, "devices", "trust", "pi", "--yes")
    assert code == 0 and "already trusted" in out

    code, out = run(capsys, "devices", "check", "lab")
    assert code == 0 and "ok" in out

    code, out = run(capsys, "bench", onnx_bundle.path, "--device", "pi", "--runs", 5, "--warmup", 1)
    assert code == 0, out
    assert "stored as run 1" in out
    rows = sqlite3.connect(cli_env.parent / "results.db").execute(
        "SELECT d.name, m.runs, m.reference_passed FROM measurements m JOIN devices d ON d.id = m.device_id").fetchall()
    assert rows == [("pi", 5, 1)]

    code, out = run(capsys, "bench", onnx_bundle.path, "--device", "pi", "--runs", 5, "--warmup", 1, "--baseline", 1)
    assert code in (0, 1) and "vs baseline run 1" in out
    assert (code == 1) == ("regression against the baseline run 1" in out)

    code, out = run(capsys, "bench", onnx_bundle.path, "--device", "nope")
    assert code == 2 and "nope" in out


def test_list_and_check_as_json(cli_env, sshd_factory, capsys):
    entry, = sshd_factory(1)
    assert main(["devices", "add", "pi", "127.0.0.1", "--port", str(entry.port), "--key", entry.key, "--python",
                 entry.python, "--home", entry.home, "--group", "lab"]) == 0
    capsys.readouterr()
    assert main(["devices", "list", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["inventory"] == str(cli_env / "devices.yaml")
    assert [(d["name"], d["port"], d["groups"]) for d in doc["devices"]] == [("pi", entry.port, ["lab"])]

    assert main(["devices", "check", "lab", "--json"]) == 1  # the host key is not trusted yet
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc["ok"] is False and "1 of 1 device(s) failed" in out.err
    (row,) = doc["devices"]
    assert row["name"] == "pi" and not row["ok"] and row["error_type"] == "HostKeyRejected"
    assert "edgekit devices trust pi" in row["error"]

    assert main(["devices", "trust", "pi", "--yes"]) == 0
    capsys.readouterr()
    assert main(["devices", "check", "pi", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (row,) = doc["devices"]
    assert doc["ok"] and row["ok"] and row["error"] is None and row["info"]["runtimes"]
