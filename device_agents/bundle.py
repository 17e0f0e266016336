"""Bundle checks on the device, in this order, before any runtime parses the model:

1. the signature over manifest.json's exact bytes, by a trusted key (device_agents.signature);
2. only then is the manifest parsed: schema version, expiry, replay (device_agents.replay), runtime version;
3. every pinned file's name, type, size and sha256; the model must be pinned;
4. an .onnx may name external data only inside the bundle and only files the manifest pins
   (device_agents.onnx_refs).

A bundle is a folder or a single plain .tar; a tar is screened and extracted by
device_agents.tarball only after its manifest's signature checks out.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import stat
import time

from device_agents import signature, tarball
from device_agents.errors import AgentError
from device_agents.onnx_refs import check_external_data
from device_agents.protocol import agent_home, sha256_file
from device_agents.replay import check_not_replayed

SUPPORTED_SCHEMAS = (1,)
MANIFEST_FILE = "manifest.json"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # a manifest with a recipe and a report is a few KiB
_RUNTIME_PACKAGES = {"executorch": "executorch", "onnxruntime": "onnxruntime"}


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
        return _verify_tar(bundle, trusted, policy, extract_to)
    raise AgentError("no_bundle", f"{bundle}: no such bundle folder or .tar file on the device; push it first")


def _authenticate(mf_bytes: bytes, sig_bytes: bytes, trusted: dict, policy: dict) -> dict:
    """Signature first, then parse and policy; the manifest carries `_signature_checked` = the key id."""
    key_id = signature.verify_manifest_signature(mf_bytes, sig_bytes, trusted)
    manifest = parse_manifest(mf_bytes)
    check_policy(manifest, **policy)
    manifest["_signature_checked"] = key_id
    return manifest


def _verify_dir(bundle_dir: str, trusted: dict, policy: dict) -> dict:
    mf_bytes = _read_small(bundle_dir, MANIFEST_FILE, MAX_MANIFEST_BYTES, "no_manifest")
    sig_bytes = _read_small(bundle_dir, signature.SIGNATURE_FILE, signature.MAX_SIGNATURE_BYTES, "unsigned")
    manifest = _authenticate(mf_bytes, sig_bytes, trusted, policy)
    verify_files(bundle_dir, manifest)
    _check_external_data(bundle_dir, manifest)
    return manifest


def _verify_tar(tar_path: str, trusted: dict, policy: dict, extract_to: str | None) -> tuple[str, dict]:
    tf, members = tarball.open_screened(tar_path)
    with tf:
        mf_bytes = tarball.read_member(tf, members, tar_path, MANIFEST_FILE, MAX_MANIFEST_BYTES, "no_manifest")
        sig_bytes = tarball.read_member(tf, members, tar_path, signature.SIGNATURE_FILE,
                                        signature.MAX_SIGNATURE_BYTES, "unsigned")
        manifest = _authenticate(mf_bytes, sig_bytes, trusted, policy)
        tarball.check_members(members, manifest["files"], ignore=(MANIFEST_FILE, signature.SIGNATURE_FILE))
        dest = extract_to or os.path.join(policy["home"], "bundles", str(manifest.get("bundle_id")))
        dest = os.path.abspath(dest)
        if os.path.isdir(dest):  # content addressed: already here, so check what is there instead
            existing = _verify_dir(dest, trusted, policy)
            if existing.get("bundle_id") == manifest.get("bundle_id"):
                return dest, existing
            raise AgentError("bundle_exists", f"{dest} already holds bundle {existing.get('bundle_id')}; choose another folder")
        tarball.extract(tf, members, manifest["files"], dest,
                        {MANIFEST_FILE: mf_bytes, signature.SIGNATURE_FILE: sig_bytes},
                        check=lambda part: _check_external_data(part, manifest))
    return dest, manifest


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


def _check_external_data(bundle_dir: str, manifest: dict) -> None:
    model = manifest["model"]["file"]
    check_external_data(file_path(bundle_dir, model), model, manifest["files"])
