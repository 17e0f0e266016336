"""Forced-command entry: the agent as the only thing an SSH key may run on the device.

Hardened set-up (on the device, in ~/.ssh/authorized_keys, one line; HOME = the agent home)::

    restrict,command="env EDGEKIT_HOME=/home/pi/.edgekit PYTHONPATH=/home/pi/.edgekit/agent/0.1.0 python3 -m device_agents.forced" ssh-ed25519 AAAA... edgekit-bench

(kit.devices.enrol.authorized_keys_line() prints exactly this line for a key.) `restrict` turns
off port/agent/X11 forwarding and the pty; `command=` makes sshd run this module whatever the
client asked for, handing the request over in SSH_ORIGINAL_COMMAND. This module never gives that
string to a shell: it refuses shell metacharacters outright, splits it with shlex, accepts only
the agent's own verbs and options, checks every option value (numbers are numbers, bundle paths
stay inside the agent home, --opts is a flat JSON object of plain values), then calls the agent
in-process. Anything else (an SFTP subsystem request, `sh`, `info; rm -rf ~`, an unknown verb)
gets a JSON error with a code and exit status 1.

Such a key cannot copy arbitrary files (no SFTP, no scp). Bundles still arrive, through two verbs
of this module only: `have` (is a bundle with this content digest installed? how much space is
free?) and `receive` (a tar of the bundle on stdin, of a declared size and sha256, unpacked with
tarfile's "data" filter into bundles/.incoming/<id>.<token>.part/, checked against the declared
content digest, then renamed into bundles/<id>/). Signatures are checked by the agent before any
model is parsed, as for any bundle. The agent code itself is installed with the enrolment key
(an unrestricted key kept on the admin's host), since it is code.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import sys
import tarfile

from device_agents.errors import AgentError
from device_agents.protocol import DIGEST_FILE, SAFE_ID, agent_home, folder_digest, reply

# Characters no legitimate agent call contains; their presence means someone tried a shell.
_SHELL_META = set(";&|`$<>\\\n\r\0*?~!#()")
_INT = re.compile(r"^-?[0-9]{1,12}$")
_FLOAT = re.compile(r"^-?[0-9]{1,12}(\.[0-9]{1,9})?$")
_INT_LIST = re.compile(r"^[0-9]{1,9}(,[0-9]{1,9}){0,7}$")
_OPT_KEY = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_BUNDLE_BYTES = 4 << 30


class Refused(AgentError):
    """A request this key may not make (or a transfer that failed its checks): code and message."""


def _home() -> str:
    return os.path.realpath(agent_home())  # resolved, so bundle paths compare after symlinks


def _matching(pattern: re.Pattern, what: str):
    """A check of one option value: the value itself if it matches `pattern`, else Refused."""
    def check(v: str) -> str:
        if not pattern.fullmatch(v):
            raise Refused("bad_value", f"{v[:70]!r} is not {what}")
        return v
    return check


_int = _matching(_INT, "an integer")
_float = _matching(_FLOAT, "a number")
_int_list = _matching(_INT_LIST, "a comma-separated list of integers")
_name = _matching(SAFE_ID, "a plain name (letters, digits, '.', '_', '-')")
_hex64 = _matching(_HEX64, "a sha256 hex digest")


def _size(v: str) -> str:
    if not _INT.fullmatch(v) or not 0 < int(v) <= MAX_BUNDLE_BYTES:
        raise Refused("bad_value", f"{v!r} is not a size between 1 and {MAX_BUNDLE_BYTES} bytes")
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
        if not _OPT_KEY.fullmatch(str(key)):
            raise Refused("bad_value", f"--opts key {key!r} is not a plain option name")
        plain = val is None or isinstance(val, (bool, int, float)) or (isinstance(val, str) and SAFE_ID.fullmatch(val))
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
    # Handled here, not by the agent: the file transfer of a forced key.
    "have": {"--bundle-id": _name, "--digest": _hex64},
    "receive": {"--bundle-id": _name, "--digest": _hex64, "--size": _size, "--sha256": _hex64},
}
TRANSFER_VERBS = ("have", "receive")


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


def _opts_of(argv: list[str]) -> dict:
    return {argv[i][2:].replace("-", "_"): argv[i + 1] for i in range(1, len(argv) - 1, 2)}


def _read_digest(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, DIGEST_FILE)) as f:
            return f.read(200).strip()
    except OSError:
        return None


def have(opts: dict) -> dict:
    bundles = os.path.join(_home(), "bundles")
    final = os.path.join(bundles, opts["bundle_id"])
    probe = bundles if os.path.isdir(bundles) else _home() if os.path.isdir(_home()) else os.path.dirname(_home())
    st = os.statvfs(probe)
    return {"present": _read_digest(final) == opts["digest"], "path": final, "free_bytes": st.f_bavail * st.f_frsize}


def receive(opts: dict, stream) -> dict:
    """Install a bundle sent as a tar on stdin; nothing lands in bundles/<id> unless every check passed."""
    bundle_id, size = opts["bundle_id"], int(opts["size"])
    bundles = os.path.join(_home(), "bundles")
    incoming = os.path.join(bundles, ".incoming")
    os.makedirs(incoming, exist_ok=True)
    final = os.path.join(bundles, bundle_id)
    stale = re.compile(rf"^{re.escape(bundle_id)}\.[0-9a-f]{{8}}\.(part|tar\.part|old)$")
    for name in os.listdir(incoming):  # leftovers of an interrupted transfer of this bundle
        if stale.match(name):
            path = os.path.join(incoming, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
    st = os.statvfs(incoming)
    if st.f_bavail * st.f_frsize < 2 * size + (1 << 20):  # the tar plus its unpacked copy
        raise Refused("no_space", f"{bundles} has {st.f_bavail * st.f_frsize} bytes free, {2 * size} needed; free space")
    token = secrets.token_hex(4)
    tar_path = os.path.join(incoming, f"{bundle_id}.{token}.tar.part")
    staging = os.path.join(incoming, f"{bundle_id}.{token}.part")
    try:
        h, left = hashlib.sha256(), size
        with open(tar_path, "wb") as f:
            while left:
                chunk = stream.read(min(left, 1 << 20))
                if not chunk:
                    raise Refused("truncated", f"the transfer ended after {size - left} of {size} bytes; push again")
                h.update(chunk)
                f.write(chunk)
                left -= len(chunk)
        if h.hexdigest() != opts["sha256"]:
            raise Refused("hash_mismatch", "the received bytes do not match the declared sha256; push again")
        if not hasattr(tarfile, "data_filter"):  # Python < 3.8.17 / 3.11.4: no safe extraction filter
            raise Refused("python_too_old", "this Python's tarfile has no 'data' filter; use Python >= 3.11.4 on the device")
        os.makedirs(staging)
        with tarfile.open(tar_path, "r:") as tar:
            for member in tar.getmembers():
                if not (member.isfile() or member.isdir()):
                    raise Refused("bad_bundle", f"tar member {member.name!r} is not a plain file or folder")
            # The "data" filter refuses absolute names, '..', links out of the folder and device files.
            tar.extractall(staging, filter="data")
        if folder_digest(staging) != opts["digest"]:
            raise Refused("hash_mismatch", "the unpacked bundle does not match its declared content digest")
        with open(os.path.join(staging, DIGEST_FILE), "w") as f:
            f.write(opts["digest"] + "\n")
        old = None
        if os.path.exists(final):
            old = os.path.join(incoming, f"{bundle_id}.{token}.old")
            os.rename(final, old)
        os.rename(staging, final)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return {"path": final, "received_bytes": size}
    finally:
        for path in (tar_path, staging):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.exists(path):
                os.unlink(path)


def main() -> int:
    command = os.environ.get("SSH_ORIGINAL_COMMAND")
    try:
        argv = parse(command)
    except Refused as e:
        return reply((command or "").split(" ", 1)[0][:40] or "?", error=e)
    if argv[0] in TRANSFER_VERBS:
        from device_agents import liveness

        with liveness.start(argv[0]):  # the host hears from a receive while the tar streams in
            try:
                if argv[0] == "have":
                    return reply("have", have(_opts_of(argv)))
                return reply("receive", receive(_opts_of(argv), sys.stdin.buffer))
            except Refused as e:
                return reply(argv[0], error=e)
            except (OSError, tarfile.TarError) as e:
                return reply(argv[0], error=Refused("transfer_failed", f"{type(e).__name__}: {e}"))
    from device_agents.agent import main as agent_main

    return agent_main(argv)


if __name__ == "__main__":
    sys.exit(main())
