"""`package()`: a model in, a signed, verifiable bundle for one runtime out.

Targets: "executorch" (.pte lowered to XNNPACK), "onnx" (.onnx, optionally ORT-optimised) and
"ort" (ORT's mobile format plus the required-operators config for a reduced ORT build).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from kit.compress.quantize import QuantizedModel
from kit.errors import EdgeKitError
from kit.package.bundle import Bundle, parse_expires, write_bundle
from kit.package.executorch import Delegation, PteRunner, export_pte
from kit.package.onnx import OrtRunner, export_onnx, self_contained_onnx
from kit.package.ort import OPS_CONFIG, OPT_LEVELS, convert_to_ort, optimize_onnx
from kit.package.verify import BundleRefused, Verified, verify
from kit.profiles import etrecord_path
from kit.progress import ProgressFn, report

TARGETS = ("executorch", "onnx", "ort")
# Below this share of compute nodes in XNNPACK a .pte runs mostly on portable (reference) kernels.
DELEGATION_WARN_BELOW = 0.5
# Lowest ONNX Runtime that implements each default-domain opset (ORT's docs/Versioning.md).
_ORT_FOR_OPSET = {13: "1.6", 14: "1.8", 15: "1.10", 16: "1.11", 17: "1.13", 18: "1.14", 19: "1.16", 20: "1.17",
                  21: "1.20", 22: "1.22", 23: "1.23"}
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
               "tensor(bool)": "bool"}
FORMATS = {"executorch": (".pte",), "onnx": (".onnx", ".ort"), "ort": (".onnx", ".ort")}


def runner_for(model_file: str | Path, threads: int = 1):
    """A callable numpy -> numpy over a .pte or .onnx/.ort file, on the host."""
    suffix = Path(model_file).suffix
    if suffix == ".pte":
        return PteRunner(model_file)
    if suffix in (".onnx", ".ort"):
        return OrtRunner(model_file, threads)
    raise EdgeKitError(f"{model_file}: unknown model format {suffix!r}; expected .pte, .onnx or .ort")


def _version(pkg: str) -> str:
    from importlib.metadata import version

    return version(pkg)


def _major_minor(v: str) -> str:
    return ".".join(v.split("+")[0].split(".")[:2])


def _ort_io(model_file: Path) -> tuple[list, list]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])

    def desc(args):
        return [{"name": a.name, "shape": list(a.shape), "dtype": _ORT_DTYPES.get(a.type, a.type)} for a in args]

    return desc(sess.get_inputs()), desc(sess.get_outputs())


def _pte_io(model, example_input, reference_output) -> tuple[list, list]:
    from kit.io import as_tuple, input_names, output_names

    ins, outs = as_tuple(example_input), as_tuple(reference_output)
    in_names, out_names = [f"input_{i}" for i in range(len(ins))], [f"output_{j}" for j in range(len(outs))]
    if not isinstance(model, (str, Path)):
        module = model.module if isinstance(model, QuantizedModel) else model
        in_names = input_names(model if not isinstance(model, QuantizedModel) else module, len(ins))
        names = output_names(module, example_input)
        out_names = names if len(names) == len(outs) else out_names
    return ([{"name": n, "shape": list(a.shape), "dtype": str(a.dtype)} for n, a in zip(in_names, ins)],
            [{"name": n, "shape": list(a.shape), "dtype": str(a.dtype)} for n, a in zip(out_names, outs)])


def _onnx_opset(model_file: Path) -> int | None:
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _delegation_warning(d: Delegation) -> str | None:
    if d.coverage >= DELEGATION_WARN_BELOW:
        return None
    fell_back = ", ".join(f"{op} x{n}" for op, n in sorted(d.non_delegated_ops.items(), key=lambda kv: -kv[1])[:6])
    return (f"only {100 * d.coverage:.0f}% of compute nodes were delegated to XNNPACK "
            f"({d.delegated_nodes} of {d.delegated_nodes + d.non_delegated_nodes}); the rest run on portable kernels "
            f"and will be slow on the device (fell back: {fell_back or 'none listed'})")


def check_request(model, target: str, *, optimize: str | None = None, expires=None, key=None) -> None:
    """What package() refuses before minutes of export: an unknown target, a model file of another
    format (`model` a path; anything else is not checked here), a bad optimisation level or expiry,
    a missing signing key. Callers that load data or models first may call it earlier."""
    if target not in TARGETS:
        raise EdgeKitError(f"target {target!r}: choose one of {', '.join(TARGETS)}")
    if isinstance(model, (str, Path)) and Path(model).suffix not in FORMATS[target]:
        suffix = Path(model).suffix
        raise EdgeKitError(f"{model}: a {suffix or 'suffix-less'} file cannot be packaged for target {target!r} "
                           f"(expects {' or '.join(FORMATS[target])})")
    if optimize is not None and optimize not in OPT_LEVELS:
        raise EdgeKitError(f"optimize {optimize!r}: choose one of {', '.join(OPT_LEVELS)}")
    parse_expires(expires)
    from kit.package.signing import load_private_key

    load_private_key(key)  # a missing signing key


def package(model, target: str, out_dir: str | Path, example_input: np.ndarray | None = None, *,
            name: str = "model", extra: dict | None = None, recipe: dict | None = None,
            compression: dict | None = None, preprocessing: dict | None = None, key: str | Path | None = None,
            sequence: int | None = None, expires=None, optimize: str | None = None,
            ort_platform: str | None = None, tolerance: dict | None = None, progress: ProgressFn = None) -> Bundle:
    """Package `model` (nn.Module, QuantizedModel, or an existing .pte/.onnx/.ort file) as a signed bundle.

    `out_dir` is a folder, or a single .tar when it ends in ".tar". `example_input` fixes the input
    shape and becomes the reference input. `key`: the signing key (default: `edgekit keys init`'s).
    `optimize` ("basic"/"extended"): ORT offline graph optimisation for the onnx/ort targets.
    `expires`: "30d", "12h", an ISO date, ... `recipe`/`compression`: recorded in the manifest.
    """
    check_request(model, target, optimize=optimize, expires=expires, key=key)
    if example_input is None:
        raise EdgeKitError("package needs an example input (its shape fixes the model's input shape)")
    multi_in = isinstance(example_input, (tuple, list))  # several inputs: one array each (kit.io)
    if multi_in:
        example_input = tuple(np.ascontiguousarray(a, dtype=np.float32 if np.issubdtype(np.asarray(a).dtype, np.floating)
                                                   else np.asarray(a).dtype) for a in example_input)
    else:
        example_input = np.ascontiguousarray(example_input, dtype=np.float32)
    extra = dict(extra or {})
    warnings: list[str] = []
    steps = 4
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        report(progress, "package", 0, steps)
        if isinstance(model, (str, Path)):
            model_file = Path(model)
            if not model_file.is_file():
                raise EdgeKitError(f"model file {model_file}: no such file")
            if model_file.suffix == ".onnx":
                model_file = self_contained_onnx(model_file, tmp / "model.onnx")
        else:
            module = model.module if isinstance(model, QuantizedModel) else model
            example = tuple(torch.from_numpy(a) for a in example_input) if multi_in else (torch.from_numpy(example_input),)
            if target == "executorch":
                model_file = tmp / "model.pte"
                delegation = export_pte(module, example, model_file, etrecord_path=tmp / "model.etrecord")
                extra["delegation"] = delegation.to_dict()
                warning = _delegation_warning(delegation)
                if warning:
                    warnings.append(warning)
            else:
                model_file = tmp / "model.onnx"
                export_onnx(module, example, model_file)
        report(progress, "package", 1, steps)

        extra_files: dict[str, Path] = {}
        if model_file.suffix == ".pte":
            runtime = {"version": _version("executorch"), "min_version": _major_minor(_version("executorch"))}
        else:
            ort_info: dict = {"optimization": None}
            if optimize and model_file.suffix == ".onnx":
                model_file = optimize_onnx(model_file, tmp / "model.opt.onnx", optimize)
                ort_info["optimization"] = optimize
            opset = _onnx_opset(model_file) if model_file.suffix == ".onnx" else None
            if target == "ort" and model_file.suffix == ".onnx":
                model_file, ops_config = convert_to_ort(model_file, tmp / "ort", ort_platform)
                extra_files[OPS_CONFIG] = ops_config
                ort_info["ops_config"] = OPS_CONFIG
            ort_info["opset"] = opset
            ort_version = _version("onnxruntime")
            # An .ort file needs an ORT at least as new as the converter; an .onnx, one that knows its opset.
            need = _major_minor(ort_version) if model_file.suffix == ".ort" else _ORT_FOR_OPSET.get(opset, _major_minor(ort_version))
            runtime = {"version": ort_version, "min_version": need}
            extra["ort"] = ort_info
        report(progress, "package", 2, steps)

        reference_output = runner_for(model_file)(example_input)
        multi_out = isinstance(reference_output, (tuple, list))
        reference_output = list(map(np.asarray, reference_output)) if multi_out else np.asarray(reference_output)
        inputs = outputs = None
        if model_file.suffix in (".onnx", ".ort"):
            inputs, outputs = _ort_io(model_file)
        elif multi_in or multi_out:  # a .pte names nothing: forward()'s arguments and the output paths (kit.io)
            inputs, outputs = _pte_io(model, example_input, reference_output)
        if recipe is not None:
            extra["recipe"] = recipe
        if compression is not None:
            extra["compression"] = compression
        if warnings:
            extra["warnings"] = warnings
        report(progress, "package", 3, steps)
        bundle = write_bundle(out_dir, model_file, name, example_input, reference_output, extra=extra,
                              tolerance=tolerance, sequence=sequence, expires=expires, extra_files=extra_files,
                              runtime=runtime, inputs=inputs, outputs=outputs, preprocessing=preprocessing, key=key)
        rec, beside = tmp / "model.etrecord", etrecord_path(bundle.path)
        if rec.is_file():  # kept beside the bundle (not in it: devices never need it), for bench --profile
            shutil.move(str(rec), str(beside))
        elif beside.is_file():
            beside.unlink()  # an older artifact's: it would name the wrong graph
        report(progress, "package", 4, steps)
    bundle.warnings = warnings
    return bundle
