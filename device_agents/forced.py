"""Forced-command entry: the agent as the only thing an SSH key may run on the device.

Hardened set-up (on the device, in ~/.ssh/authorized_keys, one line; HOME = the agent home)::

    restrict,command="env EDGEKIT_HOME=/home/pi/.edgekit PYTHONPATH=/home/pi/.edgekit/agent/0.1.0 python3 -m device_agents.forced" ssh-ed25519 AAAA... edgekit-bench

(kit.fleet.transport.authorized_keys_line() prints exactly this line for a key.) `restrict` turns
off port/agent/X11 forwarding and the pty; `command=` makes sshd run this module whatever the
client asked for, handing the request over in SSH_ORIGINAL_COMMAND. This module never gives that
string to a shell: it refuses shell metacharacters outright, splits it with shlex, accepts only
the agent's own verbs and options, checks every option value (numbers are numbers, bundle paths
stay inside the agent home, --opts is a flat JSON object of plain values), then calls the agent
in-process. Anything else (an SFTP subsystem request, `sh`, `info; rm -rf ~`, an unknown verb)
gets a JSON error with a code and exit status 1.

Such a key can run benchmarks but cannot copy files: push the agent and bundles with the
enrolment key (a separate, unrestricted key kept on the host), or mark that key forced as well
once the fleet is set up.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys

from device_agents import AGENT_VERSION, SCHEMA_VERSION

# Characters no legitimate agent call contains; their presence means someone tried a shell.
_SHELL_META = set(";&|`$<>\\\n\r\0*?~!#()")
_INT = re.compile(r"^-?[0-9]{1,12}$")
_FLOAT = re.compile(r"^-?[0-9]{1,12}(\.[0-9]{1,9})?$")
_INT_LIST = re.compile(r"^[0-9]{1,9}(,[0-9]{1,9}){0,7}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_OPT_KEY = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


class Refused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _home() -> str:
    return os.path.realpath(os.path.expanduser(os.environ.get("EDGEKIT_HOME") or "~/.edgekit"))


def _int(v: str) -> str:
    if not _INT.match(v):
        raise Refused("bad_value", f"{v!r} is not an integer")
    return v


def _float(v: str) -> str:
    if not _FLOAT.match(v):
        raise Refused("bad_value", f"{v!r} is not a number")
    return v


def _int_list(v: str) -> str:
    if not _INT_LIST.match(v):
        raise Refused("bad_value", f"{v!r} is not a comma-separated list of integers")
    return v


def _name(v: str) -> str:
    if not _NAME.match(v):
        raise Refused("bad_value", f"{v!r} is not a plain name (letters, digits, '.', '_', '-')")
    return v


def _bundle_path(v: str) -> str:
    """A folder under <home>/bundles or <home>/models, after resolving symlinks and '..'."""
    home = _home()
    real = os.path.realpath(v if os.path.isabs(v) else os.path.join(home, v))
    if not any(real.startswith(os.path.join(home, d) + os.sep) for d in ("bundles", "models")):
        raise Refused("bad_path", f"bundle path {v!r} is outside {home}/bundles and {home}/models")
    return real


def _opts(v: str) -> str:
    try:
        doc = json.loads(v)
    except ValueError:
        raise Refused("bad_value", "--opts is not valid JSON") from None
    if not isinstance(doc, dict):
        raise Refused("bad_value", "--opts must be a JSON object")
    for key, val in doc.items():
        if not _OPT_KEY.match(str(key)):
            raise Refused("bad_value", f"--opts key {key!r} is not a plain option name")
        plain = val is None or isinstance(val, (bool, int, float)) or (isinstance(val, str) and _NAME.match(val))
        if not plain and not (isinstance(val, list) and len(val) <= 8 and all(isinstance(x, int) and not isinstance(x, bool) for x in val)):
            raise Refused("bad_value", f"--opts {key}: only numbers, booleans, plain names or short integer lists are accepted")
    return json.dumps(doc)


_FLAG = None  # an option that takes no value
_BENCH = {"--bundle": _bundle_path, "--opts": _opts, "--runs": _int, "--warmup": _int, "--threads": _int,
          "--cpus": _int_list, "--min-time-s": _float, "--deadline-s": _float, "--max-memory-mb": _int, "--input-shape": _int_list,
          "--power": _FLAG}
# The agent's public verbs and their options. Fleet verbs are listed so a forced key can roll out;
# options added to the agent must be added here too (refused until then: the safe default).
# Deliberately absent: --trust-dir (the network must not choose which keys are trusted) and the
# internal _worker verb.
VERBS: dict[str, dict] = {
    "info": {},
    "verify": {"--bundle": _bundle_path},
    "bench": _BENCH,
    "activate": {"--bundle": _bundle_path, "--name": _name},
    "rollback": {"--name": _name, "--expect-current": _name},
    "status": {"--name": _name},
}


def parse(command: str | None) -> list[str]:
    """SSH_ORIGINAL_COMMAND -> a validated argv for the agent, or Refused."""
    if not command or not command.strip():
        raise Refused("no_command", "this key runs only the EdgeKit agent; give a verb: " + " | ".join(VERBS))
    bad = sorted(set(command) & _SHELL_META)
    if bad:
        raise Refused("forbidden", f"shell metacharacters {''.join(bad)!r} are refused; this key runs only agent verbs")
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise Refused("bad_command", f"cannot split the command ({e})") from None
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        raise Refused("unknown_verb", f"verb {verb[:40]!r} is not allowed; allowed: {', '.join(VERBS)}")
    spec = VERBS[verb]
    out = [verb]
    i = 0
    while i < len(rest):
        opt = rest[i]
        if opt not in spec:
            raise Refused("unknown_option", f"option {opt[:40]!r} is not allowed for {verb}; allowed: {', '.join(spec) or 'none'}")
        if spec[opt] is _FLAG:
            out.append(opt)
            i += 1
            continue
        if i + 1 >= len(rest):
            raise Refused("bad_value", f"option {opt} needs a value")
        try:
            out += [opt, spec[opt](rest[i + 1])]
        except Refused as e:
            raise Refused(e.code, f"{opt}: {e.message}") from None
        i += 2
    return out


def main() -> int:
    command = os.environ.get("SSH_ORIGINAL_COMMAND")
    try:
        argv = parse(command)
    except Refused as e:
        verb = (command or "").split(" ", 1)[0][:40] or "?"
        doc = {"schema_version": SCHEMA_VERSION, "agent_version": AGENT_VERSION, "verb": verb, "ok": False,
               "error": {"code": e.code, "message": e.message}}
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()
        return 1
    from device_agents.agent import main as agent_main

    return agent_main(argv)


if __name__ == "__main__":
    sys.exit(main())
