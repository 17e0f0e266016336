"""The wire between the kit and the agent: one JSON envelope per agent invocation on stdout.

Both sides import this module (the host through `device_agents.protocol`; the device side still
imports nothing from kit/). It owns the envelope (build, emit, parse), the content digest of a
bundle folder and its marker file, where the agent keeps its files, and the name rules for ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys

from device_agents import AGENT_VERSION, SCHEMA_VERSION

DIGEST_FILE = ".edgekit-digest"  # written into a bundle folder once its content digest is verified
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # bundle ids, model names: one path component


class ProtocolError(Exception):
    """The agent's answer is not a valid envelope (no output, not JSON, unknown schema)."""


def envelope(verb: str, result: dict | None = None, error=None) -> dict:
    """`error` is anything with `.code` and `.message` (AgentError, forced.Refused)."""
    doc = {"schema_version": SCHEMA_VERSION, "agent_version": AGENT_VERSION, "verb": verb, "ok": error is None}
    if error is None:
        doc["result"] = result
    else:
        doc["error"] = {"code": error.code, "message": error.message}
    return doc


def emit(doc: dict, stream=None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps(doc) + "\n")
    stream.flush()


def reply(verb: str, result: dict | None = None, error=None) -> int:
    """Emit the one envelope of this invocation on stdout; return the exit status that goes with it."""
    emit(envelope(verb, result, error))
    return 0 if error is None else 1


def parse_reply(stdout: bytes | str) -> dict:
    """The envelope from an agent's stdout (its last line). Raises ProtocolError with a short reason;
    the caller adds the device name. An envelope with ok=False is returned, not raised: the caller
    decides (kit.errors.AgentRefused on the host)."""
    text = stdout.decode(errors="replace") if isinstance(stdout, bytes) else stdout
    lines = text.strip().splitlines()
    if not lines:
        raise ProtocolError("the agent printed nothing")
    try:
        doc = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise ProtocolError(f"the agent's output is not JSON: {lines[-1][:200]}") from None
    if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
        got = doc.get("schema_version") if isinstance(doc, dict) else None
        raise ProtocolError(f"agent answered schema_version {got!r} (this kit speaks {SCHEMA_VERSION}); update the agent")
    if not doc.get("ok") and not isinstance(doc.get("error"), dict):
        doc["error"] = {"code": "unknown", "message": "the agent reported a failure without an error"}
    return doc


def agent_home(home: str | None = None) -> str:
    """The agent's own folder on the device: $EDGEKIT_HOME, else ~/.edgekit (absolute)."""
    return os.path.abspath(os.path.expanduser(home or os.environ.get("EDGEKIT_HOME") or "~/.edgekit"))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest_rows(rows) -> str:
    """Content address of a folder from (relative posix name, sha256, size) rows: sha256 over them by name.
    The host (before a push) and the device (after receiving) compute the same value."""
    h = hashlib.sha256()
    for rel, sha, size in sorted(rows):
        h.update(f"{rel}\0{sha}\0{size}\n".encode())
    return h.hexdigest()


def folder_digest(root: str) -> str:
    """digest_rows over every regular file below `root` (the digest marker, .part and .pyc left out)."""
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for fn in filenames:
            if fn == DIGEST_FILE or fn.endswith((".part", ".pyc")):
                continue
            path = os.path.join(dirpath, fn)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            rows.append((rel, sha256_file(path), os.path.getsize(path)))
    return digest_rows(rows)


# --- liveness: the agent's heartbeat on stderr (device_agents.liveness writes it) ---------------
HEARTBEAT_KEY = "heartbeat"


def heartbeat_line(monotonic: float, verb: str, n: int) -> bytes:
    """One heartbeat: `{"heartbeat": <device monotonic s>, "verb": ..., "n": ...}` and a newline."""
    return (json.dumps({HEARTBEAT_KEY: round(monotonic, 3), "verb": str(verb)[:40], "n": n}) + "\n").encode()


def is_heartbeat(line: str | bytes) -> bool:
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    return text.startswith('{"' + HEARTBEAT_KEY + '":')


def strip_heartbeats(text: str | bytes) -> str | bytes:
    """stderr without the heartbeat lines (what is left is the agent's own diagnostics)."""
    if isinstance(text, bytes):
        return b"".join(ln for ln in text.splitlines(keepends=True) if not is_heartbeat(ln))
    return "".join(ln for ln in text.splitlines(keepends=True) if not is_heartbeat(ln))
