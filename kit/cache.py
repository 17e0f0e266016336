"""Content-addressed cache of build steps (compress + package) so an unchanged re-run is skipped.

The key is a sha256 over everything the output depends on: the model's architecture and weights,
the recipe/step configuration, the data it was calibrated or trained on, and the versions of the
kit and the libraries that produce the artifact. The cache lives in $EDGEKIT_CACHE/builds (default
~/.cache/edgekit/builds, beside the emulated Pi's root file systems); entries are folders written to a temporary name and renamed into place, so a
killed build never leaves an entry that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

import numpy as np


def cache_dir() -> Path:
    env = os.environ.get("EDGEKIT_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "edgekit") / "builds"


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("edgekit", "torch", "executorch", "onnx", "onnxruntime", "onnxscript"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def hash_module(module) -> str:
    """Architecture (its repr) plus every parameter and buffer, in order."""
    import torch

    h = hashlib.sha256(repr(module).encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode() + str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def hash_arrays(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        if isinstance(a, (list, tuple)) or (isinstance(a, np.ndarray) and a.dtype == object):
            h.update(b"objects" + _hash_objects(a).encode())  # detection targets: a list of {"boxes", "labels"}
            continue
        a = np.ascontiguousarray(a)
        h.update(str(a.shape).encode() + str(a.dtype).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _hash_objects(items) -> str:
    """Per-image label records (dicts of arrays, nested lists) hashed by content, not by address."""
    h = hashlib.sha256(str(len(items)).encode())
    for item in items:
        if isinstance(item, dict):
            for k in sorted(item):
                h.update(str(k).encode() + hash_arrays(np.asarray(item[k])).encode())
        else:
            h.update(hash_arrays(np.asarray(item)).encode())
    return h.hexdigest()


def _kit_code() -> str:
    """sha256 of the kit's own source: a changed exporter or quantizer must not be served an artifact
    the old code built (an editable install keeps its version number across edits)."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def build_key(**parts) -> str:
    """sha256 of JSON-able `parts` plus library versions and the kit's own code."""
    blob = json.dumps({"parts": parts, "versions": _versions(), "kit_code": _kit_code()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def lookup(key: str, root: Path | None = None) -> Path | None:
    """The complete cache entry for `key`, or None."""
    final = (root or cache_dir()) / key[:2] / key
    return final if (final / ".complete").is_file() else None


def cached(key: str, produce: Callable[[Path], None], root: Path | None = None) -> tuple[Path, bool]:
    """Return (folder, hit). On a miss, `produce(tmp_folder)` fills a fresh folder that is then
    renamed into place atomically."""
    root = root or cache_dir()
    final = root / key[:2] / key
    if (final / ".complete").is_file():
        return final, True
    tmp = final.with_name(f"{key}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir(parents=True)
    try:
        produce(tmp)
        (tmp / ".complete").write_text(key)
        try:
            os.replace(tmp, final)
        except OSError:  # another build finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, False


def _copy_items(src: Path, dst: Path, items) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in items:
        if (src / item).is_dir():
            shutil.rmtree(dst / item, ignore_errors=True)
            shutil.copytree(src / item, dst / item)
        elif (src / item).is_file():
            shutil.copyfile(src / item, dst / item)


def save(key: str, folder: Path, items) -> Path:
    """Store `items` (names of files or folders in `folder`) as the entry for `key`."""
    return cached(key, lambda tmp: _copy_items(Path(folder), tmp, items))[0]


def restore(key: str, folder: Path, items) -> bool:
    """Copy the entry for `key` into `folder`; False (and nothing copied) when there is none."""
    hit = lookup(key)
    if hit is not None:
        _copy_items(hit, Path(folder), items)
    return hit is not None
