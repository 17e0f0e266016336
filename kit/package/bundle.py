"""The bundle: what travels to a device. A folder with the model, a reference input/output pair
for the on-device correctness check, and manifest.json pinning every file's sha256.

Layout::

    <bundle>/manifest.json
    <bundle>/model.pte | model.onnx | model.ort
    <bundle>/reference_input.npy
    <bundle>/reference_output.npy
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1
RUNTIMES = {".pte": "executorch", ".onnx": "onnxruntime", ".ort": "onnxruntime"}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Bundle:
    path: Path
    manifest: dict

    @property
    def model_file(self) -> Path:
        return self.path / self.manifest["model"]["file"]

    @property
    def runtime(self) -> str:
        return self.manifest["runtime"]["name"]

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]

    @classmethod
    def load(cls, path: str | Path) -> "Bundle":
        from kit.errors import EdgeKitError

        path = Path(path)
        mf = path / "manifest.json"
        if not mf.is_file():
            raise EdgeKitError(f"{path}: not a bundle (no manifest.json); create one with 'edgekit package'")
        try:
            return cls(path, json.loads(mf.read_text()))
        except json.JSONDecodeError as e:
            raise EdgeKitError(f"{mf}: not valid JSON ({e.msg} at line {e.lineno})") from e


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def write_bundle(out_dir: str | Path, model_file: str | Path, name: str, reference_input: np.ndarray,
                 reference_output: np.ndarray, *, extra: dict | None = None, tolerance: dict | None = None,
                 sequence: int | None = None) -> Bundle:
    """Assemble a bundle folder atomically: built beside `out_dir`, then renamed into place."""
    out_dir = Path(out_dir)
    model_file = Path(model_file)
    runtime = RUNTIMES[model_file.suffix]
    staging = out_dir.with_name(out_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model_name = "model" + model_file.suffix
    shutil.copyfile(model_file, staging / model_name)
    np.save(staging / "reference_input.npy", reference_input)
    np.save(staging / "reference_output.npy", reference_output)
    files = {f: {"sha256": sha256_file(staging / f), "size": (staging / f).stat().st_size}
             for f in (model_name, "reference_input.npy", "reference_output.npy")}
    model_sha = files[model_name]["sha256"]
    scale = float(np.abs(reference_output).max()) or 1.0
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "bundle_id": model_sha[:16],
        "name": name,
        "sequence": sequence if sequence is not None else int(time.time()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runtime": {"name": runtime, "format": model_file.suffix.lstrip(".")},
        "model": {"file": model_name, "sha256": model_sha, "size": files[model_name]["size"]},
        "files": files,
        "inputs": [{"name": "input", "shape": list(reference_input.shape), "dtype": str(reference_input.dtype)}],
        "outputs": [{"name": "output", "shape": list(reference_output.shape), "dtype": str(reference_output.dtype)}],
        "reference": {
            "input": "reference_input.npy",
            "output": "reference_output.npy",
            # Same artifact, other CPU: float reassociation and int8 rounding differ a little.
            "atol": (tolerance or {}).get("atol", 0.02 * scale),
            "rtol": (tolerance or {}).get("rtol", 0.01),
        },
        "kit_version": _kit_version(),
        **(extra or {}),
    }
    _write_json_atomic(staging / "manifest.json", manifest)
    if out_dir.exists():
        old = out_dir.with_name(out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)
    return Bundle(out_dir, manifest)


def _kit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgekit")
    except PackageNotFoundError:
        return "0+unknown"
