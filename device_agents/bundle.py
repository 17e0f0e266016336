"""Bundle checks on the device, in this order, before any runtime parses the model:

1. the signature over manifest.json's exact bytes, by a trusted key (device_agents.signature);
2. only then is the manifest parsed: schema version, expiry, replay (sequence per model name);
3. every pinned file's name, type, size and sha256; the model must be pinned;
4. an .onnx may name external data only inside the bundle and only files the manifest pins.

A bundle is a folder or a single plain .tar. A tar is screened header by header (no absolute
paths, no `..`, no links or devices, sizes against the manifest) and extracted by hand into
``<target>.part`` then renamed, so a refused tar leaves nothing behind.

Replay protection: ``<agent home>/state.json`` records, per model name, the highest sequence ever
activated. `record_activation` is called by the fleet `activate` verb; `verify_bundle` refuses an
older sequence unless it is the model's current bundle (or, with allow_rollback, one this device
activated before).
"""

from __future__ import annotations

import calendar
import fcntl
import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import time

from device_agents import signature
from device_agents.errors import AgentError

SUPPORTED_SCHEMAS = (1,)
MANIFEST_FILE = "manifest.json"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # a manifest with a recipe and a report is a few KiB
MAX_TAR_MEMBERS = 1000  # a bundle has a handful of files; a header flood is an attack
_RUNTIME_PACKAGES = {"executorch": "executorch", "onnxruntime": "onnxruntime"}


def agent_home(home: str | None = None) -> str:
    return os.path.expanduser(home or os.environ.get("EDGEKIT_HOME") or "~/.edgekit")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- entry point -----------------------------------------------------------------------------

def verify_bundle(bundle: str, *, home: str | None = None, trust_dirs=(), now: float | None = None,
                  check_replay: bool = True, allow_rollback: bool = False, extract_to: str | None = None) -> tuple[str, dict]:
    """Verify a bundle folder or .tar; return (bundle folder, manifest) or raise AgentError.

    A .tar is extracted (only after its signature checks out) to `extract_to`, by default
    <home>/bundles/<bundle_id>. The returned manifest carries `_signature_checked` = the key id.
    """
    home = agent_home(home)
    trusted = signature.load_trusted_keys(signature.trust_sources(home, trust_dirs))
    policy = dict(home=home, now=now, check_replay=check_replay, allow_rollback=allow_rollback)
    if os.path.isdir(bundle):
        return bundle, _verify_dir(bundle, trusted, policy)
    if os.path.isfile(bundle):
        return _extract_tar(bundle, trusted, policy, extract_to)
    raise AgentError("no_bundle", f"{bundle}: no such bundle folder or .tar file on the device; push it first")


def _verify_dir(bundle_dir: str, trusted: dict, policy: dict) -> dict:
    mf_bytes = _read_small(bundle_dir, MANIFEST_FILE, MAX_MANIFEST_BYTES, "no_manifest")
    sig_bytes = _read_small(bundle_dir, signature.SIGNATURE_FILE, signature.MAX_SIGNATURE_BYTES, "unsigned")
    key_id = signature.verify_manifest_signature(mf_bytes, sig_bytes, trusted)
    manifest = parse_manifest(mf_bytes)
    check_policy(manifest, **policy)
    verify_files(bundle_dir, manifest)
    check_external_data(bundle_dir, manifest)
    manifest["_signature_checked"] = key_id
    return manifest


def _read_small(bundle_dir: str, name: str, limit: int, missing_code: str) -> bytes:
    path = os.path.join(bundle_dir, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        what = "manifest.json" if name == MANIFEST_FILE else "signature (manifest.sig); sign it with 'edgekit package'"
        raise AgentError(missing_code, f"{bundle_dir}: no {what}; push a bundle made by 'edgekit package'")
    if not stat.S_ISREG(st.st_mode):
        raise AgentError("link_in_bundle", f"{path} is not a regular file (a link or device); refusing the bundle")
    if st.st_size > limit:
        raise AgentError("bad_manifest", f"{path} is {st.st_size} bytes, over the {limit}-byte limit")
    with open(path, "rb") as f:
        return f.read(limit + 1)


# --- the manifest ------------------------------------------------------------------------------

def parse_manifest(mf_bytes: bytes) -> dict:
    """Parse an authenticated manifest and refuse schema versions this agent does not know."""
    try:
        manifest = json.loads(mf_bytes.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise AgentError("bad_manifest", f"manifest.json is not valid JSON ({e})")
    if not isinstance(manifest, dict):
        raise AgentError("bad_manifest", "manifest.json is not a JSON object")
    if manifest.get("schema_version") not in SUPPORTED_SCHEMAS:
        raise AgentError("unsupported_schema",
                         f"manifest.json schema_version {manifest.get('schema_version')!r} is not supported by this "
                         f"agent (supports {', '.join(map(str, SUPPORTED_SCHEMAS))}); update the agent or repackage "
                         f"with a matching kit")
    files = manifest.get("files")
    model = (manifest.get("model") or {}).get("file")
    if not isinstance(files, dict) or not model or model not in files:
        raise AgentError("bad_manifest", "manifest does not pin the model file's sha256 (model.file missing from files)")
    if files[model].get("sha256") != manifest["model"].get("sha256"):
        raise AgentError("bad_manifest", "manifest's model.sha256 differs from its files entry for the model")
    for name in files:
        _safe_name(name)
    return manifest


def load_manifest(bundle_dir: str) -> dict:
    """Parse a bundle's manifest without checking it: only for a folder verify_bundle already passed."""
    with open(os.path.join(bundle_dir, MANIFEST_FILE), "rb") as f:
        return parse_manifest(f.read(MAX_MANIFEST_BYTES + 1))


def parse_utc(text: str) -> float:
    return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))


def check_policy(manifest: dict, *, home: str, now: float | None = None, check_replay: bool = True,
                 allow_rollback: bool = False) -> None:
    """Expiry, replay and runtime version: what the signed manifest says about when and where it may run."""
    now = time.time() if now is None else now
    expires = manifest.get("expires")
    if expires is not None:
        try:
            deadline = parse_utc(expires)
        except (TypeError, ValueError):
            raise AgentError("bad_manifest", f"manifest expires {expires!r} is not YYYY-MM-DDTHH:MM:SSZ")
        if now >= deadline:
            raise AgentError("expired", f"bundle {manifest.get('bundle_id')} expired at {expires}; package and sign a fresh one")
    if check_replay:
        check_not_replayed(manifest, home, allow_rollback)
    _check_runtime_version(manifest)


def _version_tuple(text: str) -> tuple[int, ...]:
    # "1.5.1", "1.32.0", "2.0.0.dev20250101+cpu" -> first three numbers
    return tuple(int(x) for x in re.findall(r"\d+", str(text).split("+")[0])[:3])


def _check_runtime_version(manifest: dict) -> None:
    runtime = manifest.get("runtime") or {}
    need = runtime.get("min_version")
    pkg = _RUNTIME_PACKAGES.get(runtime.get("name"))
    if not need or not pkg:
        return
    try:
        from importlib.metadata import PackageNotFoundError, version

        have = version(pkg)
    except PackageNotFoundError:
        return  # loading reports runtime_missing with an install hint
    if _version_tuple(have) < _version_tuple(need):
        raise AgentError("runtime_too_old", f"the bundle needs {pkg} >= {need}; this device has {have}; upgrade it")


# --- replay protection -------------------------------------------------------------------------

def _state_path(home: str) -> str:
    return os.path.join(home, "state.json")


def read_state(home: str | None = None) -> dict:
    path = _state_path(agent_home(home))
    try:
        with open(path) as f:
            state = json.load(f)
    except FileNotFoundError:
        return {"schema_version": 1, "models": {}}
    except ValueError:
        raise AgentError("bad_state", f"{path} is not valid JSON; restore it (it guards against replayed bundles)")
    state.setdefault("models", {})
    return state


def check_not_replayed(manifest: dict, home: str | None = None, allow_rollback: bool = False) -> None:
    name = manifest.get("name")
    seq = manifest.get("sequence")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise AgentError("bad_manifest", "manifest has no integer sequence (needed for replay protection)")
    entry = read_state(home)["models"].get(name)
    if not entry or seq > entry["sequence"]:
        return
    bid = manifest.get("bundle_id")
    history = {h["bundle_id"]: h["sequence"] for h in entry.get("history", [])}
    if seq == entry["sequence"]:
        if bid == entry.get("sequence_bundle_id", entry.get("bundle_id")) or history.get(bid) == seq:
            return
        raise AgentError("replayed", f"model {name!r}: another bundle with sequence {seq} was already activated; "
                                     f"re-package (sequences must increase)")
    if bid == entry.get("bundle_id") or (allow_rollback and bid in history):
        return
    raise AgentError("replayed", f"model {name!r}: bundle sequence {seq} is older than the activated {entry['sequence']} "
                                 f"(bundle {entry.get('sequence_bundle_id', entry.get('bundle_id'))}); refusing a replayed bundle")


def record_activation(manifest: dict, home: str | None = None, rollback: bool = False) -> dict:
    """Record `manifest` as the active bundle of its model (call after verify_bundle passed).

    The recorded sequence never goes down, so a rollback still refuses bundles that were never
    activated here. Returns the model's new state entry. Atomic and locked against a concurrent agent.
    """
    home = agent_home(home)
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, ".state.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        check_not_replayed(manifest, home, allow_rollback=rollback)
        state = read_state(home)
        name = manifest["name"]
        old = state["models"].get(name) or {}
        history = [h for h in old.get("history", []) if h["bundle_id"] != manifest["bundle_id"]]
        history = (history + [{"bundle_id": manifest["bundle_id"], "sequence": manifest["sequence"]}])[-20:]
        newest = not old or manifest["sequence"] >= old["sequence"]
        entry = {"sequence": manifest["sequence"] if newest else old["sequence"],
                 "sequence_bundle_id": manifest["bundle_id"] if newest else old.get("sequence_bundle_id"),
                 "bundle_id": manifest["bundle_id"], "activated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "previous": old.get("bundle_id"), "history": history}
        state["models"][name] = entry
        tmp = _state_path(home) + ".part"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, _state_path(home))
    return entry


# --- files ---------------------------------------------------------------------------------------

def _safe_name(name) -> str:
    """A manifest or tar name must be a plain relative POSIX path that stays inside the bundle."""
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise AgentError("bad_path", f"bundle names {name!r}, which is not a plain relative path")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise AgentError("bad_path", f"bundle names {name!r}, an absolute path outside the bundle")
    parts = name.split("/")
    if ".." in parts:
        raise AgentError("bad_path", f"bundle names {name!r}, which climbs out of the bundle with '..'")
    if any(p in ("", ".") for p in parts) or name in (MANIFEST_FILE, signature.SIGNATURE_FILE):
        raise AgentError("bad_path", f"bundle names {name!r}, which is not a normalised file name")
    return name


def file_path(bundle_dir: str, name: str) -> str:
    _safe_name(name)
    path = os.path.realpath(os.path.join(bundle_dir, name))
    if not path.startswith(os.path.realpath(bundle_dir) + os.sep):
        raise AgentError("bad_path", f"bundle file {name!r} resolves outside the bundle (through a link)")
    return path


def verify_files(bundle_dir: str, manifest: dict) -> None:
    """Every file the manifest pins must exist as a regular file with its size and sha256."""
    for name, meta in manifest["files"].items():
        path = file_path(bundle_dir, name)
        try:
            st = os.lstat(os.path.join(bundle_dir, name))
        except FileNotFoundError:
            raise AgentError("missing_file", f"bundle file {name!r} is missing; re-push the whole bundle")
        if not stat.S_ISREG(st.st_mode):
            raise AgentError("link_in_bundle", f"bundle file {name!r} is a link or special file, not a regular file")
        if st.st_size != meta.get("size"):
            raise AgentError("size_mismatch", f"bundle file {name!r} is {st.st_size} bytes, the manifest says {meta.get('size')}")
        if sha256_file(path) != meta.get("sha256"):
            raise AgentError("hash_mismatch", f"bundle file {name!r} does not match the sha256 the signed manifest "
                                              f"pins (corrupted or tampered); re-push the bundle")


# --- ONNX external data ----------------------------------------------------------------------------
# onnx is not on the device, so the few protobuf fields that lead to TensorProto.external_data
# are walked by hand (wire format only; tensor payloads are skipped, not read).

_MODEL, _GRAPH, _NODE, _ATTR, _FUNC, _SPARSE, _TENSOR, _TRAINING = range(8)
_CHILDREN = {
    _MODEL: {7: _GRAPH, 25: _FUNC, 20: _TRAINING},
    _TRAINING: {1: _GRAPH, 2: _GRAPH},
    _GRAPH: {1: _NODE, 5: _TENSOR, 15: _SPARSE},
    _NODE: {5: _ATTR},
    _FUNC: {7: _NODE, 11: _ATTR},
    _ATTR: {5: _TENSOR, 6: _GRAPH, 10: _TENSOR, 11: _GRAPH, 22: _SPARSE, 23: _SPARSE},
    _SPARSE: {1: _TENSOR, 2: _TENSOR},
}


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: memoryview, start: int, end: int):
    i = start
    while i < end:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = _varint(buf, i)
            if i + n > end:
                raise ValueError("truncated field")
            yield field, i, i + n
            i += n
        else:
            raise ValueError(f"wire type {wire}")
    if i != end:
        raise ValueError("truncated message")


def onnx_external_locations(path: str) -> list[str]:
    """Every TensorProto.external_data 'location' in an .onnx file."""
    with open(path, "rb") as f:
        buf = memoryview(f.read())
    found: list[str] = []

    def walk(kind: int, start: int, end: int, depth: int) -> None:
        if depth > 64:
            raise ValueError("nesting too deep")
        for field, s, e in _fields(buf, start, end):
            if kind == _TENSOR and field == 13:  # StringStringEntryProto {key=1, value=2}
                kv = {f: bytes(buf[a:b]).decode("utf-8", "replace") for f, a, b in _fields(buf, s, e)}
                if kv.get(1) == "location":
                    found.append(kv.get(2, ""))
            elif field in _CHILDREN.get(kind, {}):
                walk(_CHILDREN[kind][field], s, e, depth + 1)

    try:
        walk(_MODEL, 0, len(buf), 0)
    except (ValueError, IndexError) as e:
        raise AgentError("bad_model", f"{os.path.basename(path)} is not a valid ONNX protobuf ({e})")
    return found


def check_external_data(bundle_dir: str, manifest: dict) -> None:
    model = manifest["model"]["file"]
    if not model.endswith(".onnx"):
        return
    base = posixpath.dirname(model)
    for loc in onnx_external_locations(file_path(bundle_dir, model)):
        target = posixpath.normpath(posixpath.join(base, loc)) if loc and not loc.startswith("/") else loc
        if not loc or loc.startswith("/") or "\\" in loc or target.startswith("../") or target == "..":
            raise AgentError("external_data_outside",
                             f"{model} loads external tensor data from {loc!r}, outside the bundle; refusing it "
                             f"(re-export with the data inside the model or beside it)")
        if target not in manifest["files"]:
            raise AgentError("external_data_unpinned",
                             f"{model} loads external tensor data from {loc!r}, which the signed manifest does not pin")


# --- tar bundles ---------------------------------------------------------------------------------

def _screen_member(m: tarfile.TarInfo) -> str:
    name = m.name
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise AgentError("tar_absolute_path", f"tar member {name!r} has an absolute path; refusing the bundle")
    norm = name[2:] if name.startswith("./") else name
    norm = norm.rstrip("/") if m.isdir() else norm
    if ".." in norm.split("/") or "\\" in norm:
        raise AgentError("tar_path_escape", f"tar member {name!r} climbs out of the bundle with '..'; refusing the bundle")
    if m.issym() or m.islnk():
        raise AgentError("tar_link", f"tar member {name!r} is a {'symbolic' if m.issym() else 'hard'} link "
                                     f"(to {m.linkname!r}); bundles hold regular files only")
    if not (m.isreg() or m.isdir()):
        raise AgentError("tar_special_file", f"tar member {name!r} is a device, fifo or other special file; refusing the bundle")
    return norm


def _extract_tar(tar_path: str, trusted: dict, policy: dict, extract_to: str | None) -> tuple[str, dict]:
    try:
        tf = tarfile.open(tar_path, "r:")  # plain tar only: no decompression bombs
    except (tarfile.TarError, OSError) as e:
        raise AgentError("bad_tar", f"{tar_path}: not a plain .tar bundle ({e})")
    with tf:
        members: dict[str, tarfile.TarInfo] = {}
        try:
            for i, m in enumerate(tf):  # screen every header before reading any content
                if i >= MAX_TAR_MEMBERS:
                    raise AgentError("bad_tar", f"{tar_path}: more than {MAX_TAR_MEMBERS} members; not a bundle")
                norm = _screen_member(m)
                if m.isdir() or norm == "":
                    continue
                if norm in members:
                    raise AgentError("tar_duplicate_member", f"tar member {m.name!r} appears twice; refusing the bundle")
                members[norm] = m
        except tarfile.TarError as e:
            raise AgentError("bad_tar", f"{tar_path}: damaged tar ({e})")

        def read_small(name: str, limit: int, missing_code: str) -> bytes:
            m = members.get(name)
            if m is None:
                raise AgentError(missing_code, f"{tar_path}: no {name} in the tar; package it with 'edgekit package'")
            if m.size > limit:
                raise AgentError("bad_manifest", f"{tar_path}: {name} is {m.size} bytes, over the {limit}-byte limit")
            return tf.extractfile(m).read(limit + 1)

        mf_bytes = read_small(MANIFEST_FILE, MAX_MANIFEST_BYTES, "no_manifest")
        sig_bytes = read_small(signature.SIGNATURE_FILE, signature.MAX_SIGNATURE_BYTES, "unsigned")
        key_id = signature.verify_manifest_signature(mf_bytes, sig_bytes, trusted)
        manifest = parse_manifest(mf_bytes)
        check_policy(manifest, **policy)
        files = manifest["files"]
        for name, m in members.items():
            if name in (MANIFEST_FILE, signature.SIGNATURE_FILE):
                continue
            if name not in files:
                raise AgentError("tar_unexpected_member", f"tar member {name!r} is not pinned by the signed manifest")
            if m.size != files[name].get("size"):
                raise AgentError("tar_size_mismatch",
                                 f"tar member {name!r} is {m.size} bytes, the signed manifest says {files[name].get('size')}")
        for name in files:
            if name not in members:
                raise AgentError("missing_file", f"bundle file {name!r} is missing from the tar; re-package the bundle")

        dest = extract_to or os.path.join(policy["home"], "bundles", str(manifest.get("bundle_id")))
        dest = os.path.abspath(dest)
        if os.path.isdir(dest):  # content addressed: already here, so check what is there instead
            existing = _verify_dir(dest, trusted, policy)
            if existing.get("bundle_id") == manifest.get("bundle_id"):
                return dest, existing
            raise AgentError("bundle_exists", f"{dest} already holds bundle {existing.get('bundle_id')}; choose another folder")
        part = dest + ".part"
        shutil.rmtree(part, ignore_errors=True)
        os.makedirs(part)
        try:
            for name, meta in files.items():
                _copy_member(tf, members[name], part, name, meta)
            for name, data in ((MANIFEST_FILE, mf_bytes), (signature.SIGNATURE_FILE, sig_bytes)):
                with open(os.path.join(part, name), "xb") as f:
                    f.write(data)
            check_external_data(part, manifest)
            os.replace(part, dest)
        except BaseException:
            shutil.rmtree(part, ignore_errors=True)
            raise
    manifest["_signature_checked"] = key_id
    return dest, manifest


def _copy_member(tf: tarfile.TarFile, member: tarfile.TarInfo, root: str, name: str, meta: dict) -> None:
    """Write one screened member below `root` ourselves (no tarfile.extract), hashing as it goes."""
    parent = root
    for part in name.split("/")[:-1]:
        parent = os.path.join(parent, part)
        if not os.path.isdir(parent):
            os.mkdir(parent, 0o755)
    src = tf.extractfile(member)
    h = hashlib.sha256()
    size = 0
    fd = os.open(os.path.join(root, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as out:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            size += len(chunk)
            if size > meta["size"]:
                raise AgentError("tar_size_mismatch", f"tar member {name!r} holds more bytes than the manifest's {meta['size']}")
            h.update(chunk)
            out.write(chunk)
    if size != meta["size"]:
        raise AgentError("tar_size_mismatch", f"tar member {name!r} is truncated ({size} of {meta['size']} bytes)")
    if h.hexdigest() != meta["sha256"]:
        raise AgentError("hash_mismatch", f"bundle file {name!r} does not match the sha256 the signed manifest "
                                          f"pins (corrupted or tampered); re-package the bundle")
