"""Packaging: a model in, a verified bundle for one runtime out."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from kit.compress.quantize import QuantizedModel
from kit.errors import EdgeKitError
from kit.package.bundle import Bundle, sha256_file, write_bundle
from kit.package.executorch import Delegation, PteRunner, export_pte
from kit.package.onnx import OrtRunner, export_onnx

TARGETS = ("executorch", "onnx")


def runner_for(model_file: str | Path, threads: int = 1):
    """A callable numpy -> numpy over a .pte or .onnx/.ort file, on the host."""
    suffix = Path(model_file).suffix
    if suffix == ".pte":
        return PteRunner(model_file)
    if suffix in (".onnx", ".ort"):
        return OrtRunner(model_file, threads)
    raise EdgeKitError(f"{model_file}: unknown model format {suffix!r}; expected .pte, .onnx or .ort")


def package(model, target: str, out_dir: str | Path, example_input: np.ndarray | None = None, *,
            name: str = "model", extra: dict | None = None) -> Bundle:
    """Package `model` (nn.Module, QuantizedModel, or an existing .pte/.onnx file) as a bundle.

    `example_input` fixes the input shape and becomes the bundle's reference input.
    """
    if target not in TARGETS:
        raise EdgeKitError(f"target {target!r}: choose one of {', '.join(TARGETS)}")
    if example_input is None:
        raise EdgeKitError("package needs an example input (its shape fixes the model's input shape)")
    example_input = np.ascontiguousarray(example_input, dtype=np.float32)
    extra = dict(extra or {})
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model, (str, Path)):
            model_file = Path(model)
            if not model_file.is_file():
                raise EdgeKitError(f"model file {model_file}: no such file")
        else:
            module = model.module if isinstance(model, QuantizedModel) else model
            example = (torch.from_numpy(example_input),)
            if target == "executorch":
                model_file = Path(tmp) / "model.pte"
                delegation = export_pte(module, example, model_file)
                extra["delegation"] = delegation.to_dict()
            else:
                model_file = Path(tmp) / "model.onnx"
                export_onnx(module, example, model_file)
        want = ".pte" if target == "executorch" else (".onnx", ".ort")
        if model_file.suffix not in (want if isinstance(want, tuple) else (want,)):
            raise EdgeKitError(f"{model_file}: a {model_file.suffix} file cannot be packaged for target {target!r}")
        reference_output = runner_for(model_file)(example_input)
        return write_bundle(out_dir, model_file, name, example_input, np.asarray(reference_output), extra=extra)


__all__ = ["Bundle", "Delegation", "package", "runner_for", "export_pte", "export_onnx", "sha256_file", "TARGETS"]
