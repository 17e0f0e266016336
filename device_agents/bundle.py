"""Bundle checks on the device: the manifest, every file's size and sha256, before any parsing."""

from __future__ import annotations

import hashlib
import json
import os

from device_agents.errors import AgentError

SUPPORTED_SCHEMAS = (1,)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _inside(root: str, name: str) -> str:
    # A manifest names files relative to the bundle; anything that resolves outside is hostile.
    path = os.path.realpath(os.path.join(root, name))
    if os.path.isabs(name) or not path.startswith(os.path.realpath(root) + os.sep):
        raise AgentError("bad_path", f"manifest names {name!r}, which is outside the bundle")
    return path


def load_manifest(bundle_dir: str) -> dict:
    mf = os.path.join(bundle_dir, "manifest.json")
    if not os.path.isfile(mf):
        raise AgentError("no_manifest", f"{bundle_dir}: no manifest.json; push a bundle made by 'edgekit package'")
    try:
        with open(mf) as f:
            manifest = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise AgentError("bad_manifest", f"{mf}: not valid JSON ({e})")
    if manifest.get("schema_version") not in SUPPORTED_SCHEMAS:
        raise AgentError("unsupported_schema",
                         f"{mf}: schema_version {manifest.get('schema_version')!r} is not supported by this agent "
                         f"(supports {SUPPORTED_SCHEMAS}); update the agent or repackage")
    return manifest


def verify_files(bundle_dir: str, manifest: dict) -> None:
    """Every file the manifest pins must exist with its size and sha256; the model must be pinned."""
    files = manifest.get("files") or {}
    model = manifest.get("model", {}).get("file")
    if not model or model not in files:
        raise AgentError("bad_manifest", "manifest does not pin the model file's sha256")
    for name, meta in files.items():
        path = _inside(bundle_dir, name)
        if not os.path.isfile(path):
            raise AgentError("missing_file", f"bundle file {name!r} is missing")
        size = os.path.getsize(path)
        if size != meta.get("size"):
            raise AgentError("size_mismatch", f"bundle file {name!r} is {size} bytes, manifest says {meta.get('size')}")
        if sha256_file(path) != meta.get("sha256"):
            raise AgentError("hash_mismatch", f"bundle file {name!r} does not match the sha256 in the manifest; re-push the bundle")


def file_path(bundle_dir: str, name: str) -> str:
    return _inside(bundle_dir, name)
