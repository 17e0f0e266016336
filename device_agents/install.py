"""Fleet verbs on the device: versioned installs with an atomic `current` pointer.

Layout under the agent home ($EDGEKIT_HOME or ~/.edgekit)::

    models/<name>/<bundle_id>/        one verified copy per version
    models/<name>/current -> <bundle_id>
    models/<name>/previous -> <bundle_id>   what `rollback` returns to
    models/<name>/.lock                 serialises activate/rollback for one model

Every change is a rename: a version folder is copied to a temporary name, verified, then renamed
into place; pointers are switched by renaming a fresh temporary symlink over the old one, so a
crash or a lost connection at any instant leaves either the old or the new version running,
never a partial one. Both verbs are idempotent, so the host may repeat them after a lost link.
"""

from __future__ import annotations

import fcntl
import os
import shutil

from device_agents.bundle import load_manifest, verify_bundle
from device_agents.errors import AgentError
from device_agents.protocol import SAFE_ID, agent_home
from device_agents.replay import record_activation

KEEP_VERSIONS = 2  # current + previous; older version folders are removed after a switch


def _check_name(kind: str, value: str) -> str:
    # Names become path components: anything but a plain token could escape models/.
    if not isinstance(value, str) or not SAFE_ID.fullmatch(value):
        raise AgentError("bad_name", f"{kind} {value!r} must be letters, digits, '.', '_' or '-' (max 128)")
    return value


def _model_dir(name: str) -> str:
    return os.path.join(agent_home(), "models", _check_name("model name", name))


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_link(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _switch_link(model_dir: str, link: str, target: str | None) -> None:
    """Point `link` at `target` atomically (rename of a temporary symlink), or remove it."""
    path = os.path.join(model_dir, link)
    if target is None:
        if os.path.lexists(path):
            os.unlink(path)
    else:
        tmp = os.path.join(model_dir, f".{link}.tmp-{os.getpid()}")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)  # relative target: the folder stays valid if the home moves
        os.replace(tmp, path)
    _fsync_dir(model_dir)


class _Lock:
    """An exclusive flock on models/<name>/.lock: two agents never switch one model at once."""

    def __init__(self, model_dir: str):
        os.makedirs(model_dir, exist_ok=True)
        self.fd = os.open(os.path.join(model_dir, ".lock"), os.O_CREAT | os.O_RDWR, 0o600)

    def __enter__(self):
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _verify(bundle_dir: str, check_replay: bool = True) -> dict:
    """Signature by a trusted key, expiry, replay, every pinned file (device_agents/bundle.py)."""
    return verify_bundle(bundle_dir, home=agent_home(), check_replay=check_replay)[1]


def _record_replay(manifest: dict, rollback: bool = False) -> None:
    """Replay protection: record the activated sequence in state.json (device_agents/replay.py)."""
    record_activation(manifest, agent_home(), rollback=rollback)


def _version_info(model_dir: str, bundle_id: str | None) -> dict | None:
    if not bundle_id:
        return None
    path = os.path.join(model_dir, bundle_id)
    info = {"bundle_id": bundle_id, "path": path, "present": os.path.isdir(path)}
    if info["present"]:
        try:
            m = load_manifest(path)
            info.update({"sequence": m.get("sequence"), "created": m.get("created"),
                         "runtime": (m.get("runtime") or {}).get("name"), "model_sha256": (m.get("model") or {}).get("sha256")})
        except AgentError as e:
            info.update({"present": False, "error": e.message})
    return info


def _prune(model_dir: str, keep: set[str]) -> None:
    for entry in os.listdir(model_dir):
        path = os.path.join(model_dir, entry)
        if entry in keep or entry.startswith(".") or os.path.islink(path) or not os.path.isdir(path):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _install(src: str, model_dir: str, bundle_id: str) -> str:
    """Copy the bundle into models/<name>/<bundle_id>/ and verify the copy, or reuse a verified one."""
    dest = os.path.join(model_dir, bundle_id)
    if os.path.isdir(dest):
        try:
            _verify(dest, check_replay=False)
            return dest
        except AgentError:
            shutil.rmtree(dest)  # damaged earlier copy (disk error, tampering): install afresh
    tmp = os.path.join(model_dir, f".{bundle_id}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp, symlinks=False, ignore=shutil.ignore_patterns("*.part", ".*"))
        _verify(tmp, check_replay=False)  # the copy, not only the source, is what will run
        for root, _, files in os.walk(tmp):
            for f in files:
                fd = os.open(os.path.join(root, f), os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        os.replace(tmp, dest)
        _fsync_dir(model_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def activate(bundle: str, name: str) -> dict:
    src = os.path.abspath(bundle)
    if not os.path.isdir(src):
        raise AgentError("no_bundle", f"{bundle}: no such bundle folder on the device; push it first")
    manifest = _verify(src)
    bundle_id = _check_name("bundle_id", str(manifest.get("bundle_id")))
    model_dir = _model_dir(name)
    with _Lock(model_dir):
        current = _read_link(os.path.join(model_dir, "current"))
        if current == bundle_id and os.path.isdir(os.path.join(model_dir, bundle_id)):
            # Already running it (a repeated call after a lost link): change nothing.
            previous = _read_link(os.path.join(model_dir, "previous"))
            changed = False
        else:
            _record_replay(manifest)
            _install(src, model_dir, bundle_id)
            previous = current
            # previous first: if we stop between the two renames, current still names the old
            # version and previous names it too, which is a valid (if redundant) state.
            if current:
                _switch_link(model_dir, "previous", current)
            _switch_link(model_dir, "current", bundle_id)
            changed = True
        _prune(model_dir, {b for b in (bundle_id, previous) if b})
    return {"name": name, "bundle_id": bundle_id, "current": bundle_id, "previous": previous, "changed": changed,
            "path": os.path.join(model_dir, "current"), "installed_path": os.path.join(model_dir, bundle_id)}


def rollback(name: str, expect_current: str | None = None) -> dict:
    """Point `current` back at `previous` (and `previous` at what was current).

    With `expect_current`, roll back only if that version is current: repeating the call after a
    lost link then changes nothing instead of flipping back again.
    """
    model_dir = _model_dir(name)
    if not os.path.isdir(model_dir):
        raise AgentError("not_installed", f"no model named {name!r} is installed on this device")
    with _Lock(model_dir):
        current = _read_link(os.path.join(model_dir, "current"))
        previous = _read_link(os.path.join(model_dir, "previous"))
        if expect_current is not None and current != expect_current:
            return {"name": name, "current": current, "previous": previous, "changed": False,
                    "reason": f"current is {current!r}, not {expect_current!r}"}
        if previous and not os.path.isdir(os.path.join(model_dir, previous)):
            raise AgentError("previous_missing", f"model {name!r}: previous version {previous} is not installed; cannot roll back")
        warning = None
        if previous:
            # Replay state follows the switch, so the agent keeps accepting the running version
            # (bench/verify) and the newer one stays re-activatable (its sequence is kept).
            try:
                _record_replay(load_manifest(os.path.join(model_dir, previous)), rollback=True)
            except AgentError as e:  # never block the way back to a working model
                warning = f"replay state not updated: {e.message}"
            _switch_link(model_dir, "current", previous)
            if current:
                _switch_link(model_dir, "previous", current)
            new_current, new_previous = previous, current
        else:
            # First install rolled back: the device goes back to running no version of this model.
            _switch_link(model_dir, "current", None)
            new_current, new_previous = None, None
            if current:
                _switch_link(model_dir, "previous", None)
    result = {"name": name, "current": new_current, "previous": new_previous, "changed": current != new_current,
              "rolled_back_from": current}
    if warning:
        result["warning"] = warning
    return result


def status(name: str | None = None) -> dict:
    root = os.path.join(agent_home(), "models")
    names = [_check_name("model name", name)] if name else (sorted(os.listdir(root)) if os.path.isdir(root) else [])
    models = {}
    for n in names:
        d = os.path.join(root, n)
        if not os.path.isdir(d):
            continue
        current = _read_link(os.path.join(d, "current"))
        previous = _read_link(os.path.join(d, "previous"))
        versions = sorted(e for e in os.listdir(d) if not e.startswith(".") and not os.path.islink(os.path.join(d, e))
                          and os.path.isdir(os.path.join(d, e)))
        models[n] = {"current": _version_info(d, current), "previous": _version_info(d, previous), "versions": versions}
    return {"home": agent_home(), "models": models}


VERBS = ("activate", "rollback", "status")


def add_parsers(sub) -> None:
    """The fleet verbs' argparse subcommands (wired into agent.py's parser)."""
    a = sub.add_parser("activate", help="install a verified bundle as a model's current version")
    a.add_argument("--bundle", required=True)
    a.add_argument("--name", required=True)
    r = sub.add_parser("rollback", help="switch a model back to its previous version")
    r.add_argument("--name", required=True)
    r.add_argument("--expect-current", help="roll back only if this bundle_id is current (idempotent retries)")
    s = sub.add_parser("status", help="what version of each model runs")
    s.add_argument("--name")


def run_verb(args) -> dict:
    if args.verb == "activate":
        return activate(args.bundle, args.name)
    if args.verb == "rollback":
        return rollback(args.name, args.expect_current)
    return status(args.name)
