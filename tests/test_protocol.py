"""The wire between kit and agent (device_agents/protocol.py): one envelope per invocation, parsed
the same way everywhere, and the same envelope from every entry point of the agent (agent.py,
the bench child in bench.py, the forced-command entry forced.py)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from device_agents import AGENT_VERSION, SCHEMA_VERSION, forced
from device_agents.errors import AgentError, as_agent_error
from device_agents.protocol import (
    DIGEST_FILE, SAFE_ID, ProtocolError, agent_home, digest_rows, emit, envelope, folder_digest, parse_reply, reply,
    sha256_file,
)

REPO = Path(__file__).resolve().parent.parent
OK_KEYS = {"schema_version", "agent_version", "verb", "ok", "result"}
ERROR_KEYS = {"schema_version", "agent_version", "verb", "ok", "error"}


def _line(doc: dict) -> str:
    return json.dumps(doc) + "\n"


# --- parse_reply ----------------------------------------------------------------------------------

@pytest.mark.parametrize("stdout", ["", "   \n\n", b""])
def test_parse_reply_refuses_an_empty_answer(stdout):
    with pytest.raises(ProtocolError, match="printed nothing"):
        parse_reply(stdout)


def test_parse_reply_refuses_output_that_is_not_json():
    with pytest.raises(ProtocolError, match="not JSON: Traceback"):
        parse_reply("Traceback (most recent call last):\n")


@pytest.mark.parametrize("doc", [{"schema_version": SCHEMA_VERSION + 1, "ok": True, "result": {}},
                                 {"ok": True, "result": {}}, [1, 2, 3], "a string"])
def test_parse_reply_refuses_an_unknown_schema_version(doc):
    with pytest.raises(ProtocolError, match="schema_version") as e:
        parse_reply(json.dumps(doc))
    assert "update the agent" in str(e.value)


def test_parse_reply_returns_a_refusal_with_its_error():
    doc = envelope("bench", error=AgentError("deadline", "killed at the deadline"))
    got = parse_reply(_line(doc).encode())
    assert got["ok"] is False and got["error"] == {"code": "deadline", "message": "killed at the deadline"}
    assert got["verb"] == "bench"


def test_parse_reply_fills_in_an_error_the_agent_left_out():
    got = parse_reply(json.dumps({"schema_version": SCHEMA_VERSION, "ok": False}))
    assert got["ok"] is False and got["error"]["code"] == "unknown"


def test_parse_reply_takes_the_last_line():
    noise = "loading runtime...\n{\"not\": \"the envelope\"}\n"
    doc = envelope("info", {"arch": "aarch64"})
    assert parse_reply(noise + _line(doc)) == doc
    # ... and a last line that is noise is refused even after a good envelope
    with pytest.raises(ProtocolError):
        parse_reply(_line(doc) + "bye\n")


# --- envelope, emit, reply ------------------------------------------------------------------------

def test_envelope_shape_for_ok_and_error():
    ok = envelope("info", {"x": 1})
    assert ok == {"schema_version": SCHEMA_VERSION, "agent_version": AGENT_VERSION, "verb": "info", "ok": True,
                  "result": {"x": 1}}
    err = envelope("verify", error=AgentError("no_bundle", "push it first"))
    assert set(err) == ERROR_KEYS and err["ok"] is False
    assert err["error"] == {"code": "no_bundle", "message": "push it first"}
    # forced.Refused is an AgentError: the same two fields
    assert envelope("x", error=forced.Refused("forbidden", "no"))["error"] == {"code": "forbidden", "message": "no"}


def test_emit_and_reply_write_one_line(capsys):
    buf = io.StringIO()
    emit(envelope("info", {}), buf)
    assert buf.getvalue().count("\n") == 1 and parse_reply(buf.getvalue())["ok"] is True
    assert reply("status", {"models": {}}) == 0
    assert reply("status", error=AgentError("bad_name", "no")) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(ln)["ok"] for ln in lines] == [True, False]


def test_as_agent_error_maps_every_failure_to_a_code():
    e = AgentError("deadline", "late")
    assert as_agent_error(e, "oom") is e
    assert (as_agent_error(MemoryError(), "oom").code, as_agent_error(MemoryError(), "oom").message) == ("resource_limit", "oom")
    internal = as_agent_error(KeyError("runs"), "oom")
    assert internal.code == "internal" and internal.message == "KeyError: 'runs'"


# --- digests, home, names -------------------------------------------------------------------------

def test_folder_digest_is_digest_rows_over_the_files(tmp_path):
    (tmp_path / "sub").mkdir()
    files = {"model.onnx": b"\x08\x07model", "sub/ref_in.npy": b"input", "manifest.json": b"{}"}
    for rel, data in files.items():
        (tmp_path / rel).write_bytes(data)
    rows = [(rel, hashlib.sha256(data).hexdigest(), len(data)) for rel, data in files.items()]
    want = digest_rows(rows)
    assert folder_digest(str(tmp_path)) == want
    assert digest_rows(list(reversed(rows))) == want  # order of the rows does not matter

    # left out: the marker written after a verified receive, partial transfers, bytecode caches
    (tmp_path / DIGEST_FILE).write_text(want + "\n")
    (tmp_path / "model.onnx.part").write_bytes(b"half")
    (tmp_path / "sub" / "x.pyc").write_bytes(b"pyc")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "y.py").write_bytes(b"cache")
    assert folder_digest(str(tmp_path)) == want

    (tmp_path / "sub" / "ref_in.npy").write_bytes(b"inpuT")  # same size, other content
    assert folder_digest(str(tmp_path)) != want


def test_sha256_file(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * (3 << 20))
    assert sha256_file(str(p)) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()


def test_agent_home_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEKIT_HOME", "rel/home")
    assert agent_home() == str(tmp_path / "rel" / "home")
    assert agent_home("/explicit") == "/explicit"
    monkeypatch.delenv("EDGEKIT_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert agent_home() == str(tmp_path / ".edgekit")


@pytest.mark.parametrize("name,ok", [("resnet-8.v2_int8", True), ("a", True), ("a" * 128, True), ("a" * 129, False),
                                     (".", False), ("..", False), ("-x", False), ("a/b", False), ("a b", False),
                                     ("", False)])
def test_safe_id(name, ok):
    assert bool(SAFE_ID.fullmatch(name)) is ok


# --- every entry point answers with the same envelope ------------------------------------------------

def _run(args, stdin=b"", env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", *args], input=stdin, capture_output=True, env=env, timeout=120)


def test_agent_bench_child_and_forced_entry_answer_with_the_same_envelope(tmp_path, monkeypatch, capsys):
    home = {"EDGEKIT_HOME": str(tmp_path / "home")}
    info = _run(["device_agents", "info"], env_extra=home)
    assert info.returncode == 0, info.stderr
    agent_ok = parse_reply(info.stdout)
    assert set(agent_ok) == OK_KEYS and agent_ok["verb"] == "info" and agent_ok["ok"] is True

    refused = _run(["device_agents", "verify", "--bundle", str(tmp_path / "nothing")], env_extra=home)
    agent_err = parse_reply(refused.stdout)
    assert refused.returncode == 1 and agent_err["verb"] == "verify" and agent_err["error"]["code"] == "no_trusted_keys"

    child = _run(["device_agents.bench"], stdin=b"not a request", env_extra=home)  # the sandboxed bench child
    child_err = parse_reply(child.stdout)
    assert child.returncode == 1 and child_err["verb"] == "bench" and child_err["error"]["code"] == "internal"

    monkeypatch.setenv("EDGEKIT_HOME", home["EDGEKIT_HOME"])
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "info; rm -rf ~")
    assert forced.main() == 1
    forced_err = parse_reply(capsys.readouterr().out)
    assert forced_err["verb"] == "info;" and forced_err["error"]["code"] == "forbidden"

    for doc in (agent_err, child_err, forced_err):
        assert set(doc) == ERROR_KEYS and doc["ok"] is False and set(doc["error"]) == {"code", "message"}
        assert (doc["schema_version"], doc["agent_version"]) == (agent_ok["schema_version"], agent_ok["agent_version"])

    # a verb the forced entry hands to the agent answers exactly like the agent itself
    monkeypatch.setenv("SSH_ORIGINAL_COMMAND", "status")
    assert forced.main() == 0
    status = parse_reply(capsys.readouterr().out)
    assert set(status) == OK_KEYS and status["verb"] == "status"
