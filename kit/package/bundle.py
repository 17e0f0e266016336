"""The bundle: what travels to a device. A folder (or one plain .tar of it) holding the model, a
reference input/output pair for the on-device correctness check, manifest.json pinning every
file's sha256, and manifest.sig, an ed25519 signature over manifest.json's exact bytes.

Layout::

    <bundle>/manifest.json          canonical JSON (kit.package.signing.canonical_json)
    <bundle>/manifest.sig           {"algorithm": "ed25519", "key_id": ..., "signature": ...}
    <bundle>/model.pte | model.onnx | model.ort
    <bundle>/required_operators.config   (.ort only: for a reduced ORT build)
    <bundle>/reference_input.npy
    <bundle>/reference_output.npy
    (several inputs/outputs: reference_input_<i>.npy, reference_output_<j>.npy instead)

Manifest (schema_version 1): bundle_id (sha256 of the manifest without it, 16 hex), name,
sequence (monotonic per name: replay protection), created, expires (optional, UTC), runtime
{name, format, version, min_version}, model {file, sha256, size}, files {name: {sha256, size}},
inputs/outputs [{name, shape, dtype}] (every tensor), preprocessing, reference {input, output, atol,
rtol} (several inputs/outputs: {inputs: [...], outputs: [...], atol, rtol, atols: [one per output]}
with the files in forward()'s / the flattened outputs' order, kit.io),
recipe, compression, delegation (.pte), ort (.onnx/.ort), kit_version, signer (key id).

`preprocessing` is what the model is fed: layout, dtype and, when the packager knows them, the
kit.preprocess.Preprocess fields (preset, mean, std, resize, crop_fraction, channel_order,
value_range) plus channels, image_size and the data set's name (Preprocess.manifest). The
reference input is already preprocessed, so the device's reference check needs none of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from device_agents.protocol import sha256_file  # the device computes it the same way: one implementation
from kit.errors import EdgeKitError

SCHEMA_VERSION = 1
RUNTIMES = {".pte": "executorch", ".onnx": "onnxruntime", ".ort": "onnxruntime"}


@dataclass
class Bundle:
    path: Path
    manifest: dict
    warnings: list[str] = field(default_factory=list)

    @property
    def is_tar(self) -> bool:
        return self.path.is_file()

    @property
    def model_file(self) -> Path:
        if self.is_tar:
            raise EdgeKitError(f"{self.path}: a .tar bundle; extract it (edgekit verify) to reach the model file")
        return self.path / self.manifest["model"]["file"]

    @property
    def runtime(self) -> str:
        return self.manifest["runtime"]["name"]

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]

    @classmethod
    def load(cls, path: str | Path) -> "Bundle":
        """Read a bundle's manifest (folder or .tar) without verifying it: see kit.package.verify."""
        path = Path(path)
        try:
            if path.is_file():
                with tarfile.open(path, "r:") as tf:
                    member = tf.getmember("manifest.json")
                    if not member.isreg() or member.size > (4 << 20):
                        raise EdgeKitError(f"{path}: manifest.json in the tar is not a small regular file")
                    text = tf.extractfile(member).read()
            else:
                mf = path / "manifest.json"
                if not mf.is_file():
                    raise EdgeKitError(f"{path}: not a bundle (no manifest.json); create one with 'edgekit package'")
                text = mf.read_bytes()
            return cls(path, json.loads(text))
        except (tarfile.TarError, KeyError) as e:
            raise EdgeKitError(f"{path}: not a bundle .tar with a manifest.json ({e})") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EdgeKitError(f"{path}/manifest.json: not valid JSON ({e})") from e


def parse_expires(value, now: datetime | None = None) -> str | None:
    """'30d' / '12h' / '90m' / '3600s', an ISO date or datetime, a timedelta or datetime -> UTC 'YYYY-MM-DDTHH:MM:SSZ'."""
    if value is None or value == "":
        return None
    now = now or datetime.now(timezone.utc)
    if isinstance(value, timedelta):
        when = now + value
    elif isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    else:
        text = str(value).strip()
        m = re.fullmatch(r"(\d+)\s*([smhdw])", text)
        if m:
            unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[m.group(2)]
            when = now + timedelta(**{unit: int(m.group(1))})
        else:
            try:
                when = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError as e:
                raise EdgeKitError(f"expires {text!r}: use a duration like 30d / 12h or a date like 2027-01-31") from e
            when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _file_entry(path: Path) -> dict:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def write_bundle(out: str | Path, model_file: str | Path, name: str, reference_input: np.ndarray,
                 reference_output: np.ndarray, *, extra: dict | None = None, tolerance: dict | None = None,
                 sequence: int | None = None, expires=None, extra_files: dict[str, Path] | None = None,
                 runtime: dict | None = None, inputs: list | None = None, outputs: list | None = None,
                 preprocessing: dict | None = None, key: str | Path | None = None, sign: bool = True) -> Bundle:
    """Assemble and sign a bundle atomically: a folder, or a single .tar when `out` ends in .tar."""
    from kit.package.signing import canonical_json, sign_bytes
    from kit.package.tarball import write_tar

    out = Path(out)
    model_file = Path(model_file)
    as_tar = out.suffix == ".tar"
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes it 0700; the bundle is not secret
    try:
        model_name = "model" + model_file.suffix
        shutil.copyfile(model_file, staging / model_name)
        for fname, src in (extra_files or {}).items():
            shutil.copyfile(src, staging / fname)
        multi = isinstance(reference_input, (tuple, list)) or isinstance(reference_output, (tuple, list))
        if multi:
            ref_files, reference = _multi_reference(staging, reference_input, reference_output, tolerance)
            inputs = inputs or _described(reference_input, "input")
            outputs = outputs or _described(reference_output, "output")
        else:
            np.save(staging / "reference_input.npy", reference_input)
            np.save(staging / "reference_output.npy", reference_output)
            ref_files = ["reference_input.npy", "reference_output.npy"]
        names = [model_name, *(extra_files or {}), *ref_files]
        files = {f: _file_entry(staging / f) for f in names}
        if not multi:
            scale = float(np.abs(reference_output).max()) or 1.0
            reference = {
                "input": "reference_input.npy",
                "output": "reference_output.npy",
                # Same artifact, other CPU: float reassociation and int8 rounding differ a little.
                "atol": (tolerance or {}).get("atol", 0.02 * scale),
                "rtol": (tolerance or {}).get("rtol", 0.01),
            }
            inputs = inputs or [{"name": "input", "shape": list(reference_input.shape), "dtype": str(reference_input.dtype)}]
            outputs = outputs or [{"name": "output", "shape": list(reference_output.shape), "dtype": str(reference_output.dtype)}]
        first_in = reference_input[0] if isinstance(reference_input, (tuple, list)) else reference_input
        runtime_info = {"name": RUNTIMES[model_file.suffix], "format": model_file.suffix.lstrip("."), **(runtime or {})}
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            # Milliseconds since the epoch: monotonic per model name across hosts without shared state.
            "sequence": int(sequence) if sequence is not None else time.time_ns() // 1_000_000,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "runtime": runtime_info,
            "model": {"file": model_name, **files[model_name]},
            "files": files,
            "inputs": inputs,
            "outputs": outputs,
            "preprocessing": preprocessing or {"layout": "NCHW", "dtype": str(first_in.dtype)},
            "reference": reference,
            "kit_version": _kit_version(),
            **(extra or {}),
        }
        exp = parse_expires(expires)
        if exp:
            manifest["expires"] = exp
        manifest.pop("bundle_id", None)
        if sign:
            from kit.package.signing import key_id

            manifest["signer"] = key_id(key)
        manifest["bundle_id"] = hashlib.sha256(canonical_json(manifest)).hexdigest()[:16]
        manifest_bytes = canonical_json(manifest)
        (staging / "manifest.json").write_bytes(manifest_bytes)
        if sign:
            (staging / "manifest.sig").write_bytes(sign_bytes(manifest_bytes, key))
        if as_tar:
            write_tar(staging, out)
        else:
            _replace_dir(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Bundle(out, manifest)


def _described(arrays, kind: str) -> list[dict]:
    arrays = list(arrays) if isinstance(arrays, (tuple, list)) else [arrays]
    return [{"name": f"{kind}_{i}", "shape": list(np.shape(a)), "dtype": str(np.asarray(a).dtype)} for i, a in enumerate(arrays)]


def _multi_reference(staging: Path, reference_input, reference_output, tolerance: dict | None) -> tuple[list, dict]:
    """Several inputs/outputs: one .npy per tensor; atol per output (each output has its own scale)."""
    ins = list(reference_input) if isinstance(reference_input, (tuple, list)) else [reference_input]
    outs = list(reference_output) if isinstance(reference_output, (tuple, list)) else [reference_output]
    in_files = [f"reference_input_{i}.npy" for i in range(len(ins))]
    out_files = [f"reference_output_{j}.npy" for j in range(len(outs))]
    for f, a in zip(in_files + out_files, ins + outs):
        np.save(staging / f, np.asarray(a))
    atols = [(tolerance or {}).get("atol", 0.02 * ((float(np.abs(np.asarray(a)).max()) if np.size(a) else 0.0) or 1.0))
             for a in outs]
    reference = {"inputs": in_files, "outputs": out_files, "atol": max(atols), "atols": atols,
                 "rtol": (tolerance or {}).get("rtol", 0.01)}
    return in_files + out_files, reference


def _replace_dir(staging: Path, out: Path) -> None:
    if out.is_dir():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    elif out.exists():
        raise EdgeKitError(f"--out {out}: a file is in the way; remove it or choose another folder")
    else:
        os.replace(staging, out)


def _kit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgekit")
    except PackageNotFoundError:
        return "0+unknown"
