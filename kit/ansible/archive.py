"""Deterministic plain tars for the exported role: the agent and the bundle each as ONE file.

One file per payload means two Ansible module runs (stat + copy) instead of two per file, and the
copy module still sends it only when its checksum differs. The same input always makes the same
bytes (sorted names, mtime 0, uid/gid 0, no owner names, modes 0644), so a re-export does not
make the device fetch it again.

On the device both are unpacked by the agent's own checked extraction (device_agents.tarball:
refuses links, '..', absolute paths, special files, duplicates, anything not pinned; writes each
member itself, hashing as it goes, into a .part folder renamed into place only when all checked
out):
- the bundle by `device_agents verify --bundle <tar>` (signature first, then every pinned file);
- the agent by UNPACK_AGENT below, a fixed script run with `python3 -c`: it checks the tar's
  sha256 against the digest exported with the role, loads device_agents.errors and
  device_agents.tarball from the tar only after their own pinned sha256 match, then screens and
  extracts the whole tar against the pins (name, size, sha256 of every file).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from kit.errors import EdgeKitError

_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".part")


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, 0, 0o644, 0, 0, "", ""
    return ti


def write_tar(dest: Path, members: list[tuple[str, bytes]]) -> str:
    """Write `members` ((name, bytes), sorted by name) as a plain tar; return its sha256."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in sorted(members):
            tf.addfile(_tar_info(name, len(data)), io.BytesIO(data))
    data = buf.getvalue()
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def _pins(members: list[tuple[str, bytes]]) -> dict:
    return {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in members}


def agent_tar(agent_pkg: Path, dest: Path) -> tuple[str, dict]:
    """The agent package (device_agents/...) as one tar; (sha256 of the tar, {member: {size, sha256}})."""
    members = []
    for p in sorted(agent_pkg.rglob("*")):
        rel = p.relative_to(agent_pkg)
        if any(part in _SKIP_DIRS for part in rel.parts) or p.name.endswith(_SKIP_SUFFIXES) or p.is_dir():
            continue
        if p.is_symlink() or not p.is_file():
            raise EdgeKitError(f"{p}: not a regular file; the agent package must hold plain files only")
        members.append((f"device_agents/{rel.as_posix()}", p.read_bytes()))
    return write_tar(dest, members), _pins(members)


def bundle_tar(bundle, dest: Path) -> str:
    """The bundle folder as one tar holding exactly what the agent's tar check accepts: the pinned
    files, manifest.json and manifest.sig (nothing else). Returns the tar's sha256."""
    root = Path(bundle.path)
    names = sorted(set(bundle.manifest.get("files", {})) | {"manifest.json", "manifest.sig"})
    members = []
    for name in names:
        p = root / name
        if p.is_symlink() or not p.is_file():
            raise EdgeKitError(f"{p}: missing or not a regular file; re-package the bundle with 'edgekit package'")
        members.append((name, p.read_bytes()))
    return write_tar(dest, members)


# Run on the device as: python3 -c UNPACK_AGENT <tar> <dest> <tar sha256> <pins json>. Prints one
# JSON line {"ok", "changed"} (or {"ok": false, "error"}); exit 1 on refusal. Fixed text from the
# kit, never built from data; its arguments are argv.
UNPACK_AGENT = r'''
import hashlib, json, os, shutil, sys, tarfile, types
def out(doc, rc=0):
    print(json.dumps(doc)); sys.exit(rc)
tar_path, dest, want, pins = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for c in iter(lambda: f.read(1 << 20), b""):
            h.update(c)
    return h.hexdigest()
def same(root):
    try:
        return all(not os.path.islink(os.path.join(root, n)) and os.path.getsize(os.path.join(root, n)) == m["size"]
                   and sha(os.path.join(root, n)) == m["sha256"] for n, m in pins.items())
    except OSError:
        return False
if os.path.isdir(dest) and same(dest):
    out({"ok": True, "changed": False})
if sha(tar_path) != want:
    out({"ok": False, "error": "%s: sha256 differs from the exported agent archive; re-run the play" % tar_path}, 1)
with tarfile.open(tar_path, "r:") as tf:
    pkg = types.ModuleType("device_agents"); pkg.__path__ = []
    sys.modules["device_agents"] = pkg
    for mod in ("errors", "tarball"):
        name = "device_agents/%s.py" % mod
        src = tf.extractfile(tf.getmember(name)).read()
        if hashlib.sha256(src).hexdigest() != pins[name]["sha256"]:
            out({"ok": False, "error": "%s: %s does not match its pin" % (tar_path, name)}, 1)
        m = types.ModuleType("device_agents." + mod); m.__file__ = name
        exec(compile(src, name, "exec"), m.__dict__)
        sys.modules["device_agents." + mod] = m; setattr(pkg, mod, m)
from device_agents import tarball
from device_agents.errors import AgentError
new = dest + ".new"
try:
    tf, members = tarball.open_screened(tar_path)
    with tf:
        tarball.check_members(members, pins)
        shutil.rmtree(new, ignore_errors=True)
        tarball.extract(tf, members, pins, new, {}, check=lambda part: None)
except AgentError as e:
    out({"ok": False, "error": "%s: %s (%s)" % (tar_path, e, getattr(e, "code", "refused"))}, 1)
old = dest + ".old"
shutil.rmtree(old, ignore_errors=True)
if os.path.isdir(dest):
    os.replace(dest, old)
os.replace(new, dest)
shutil.rmtree(old, ignore_errors=True)
out({"ok": True, "changed": True})
'''
