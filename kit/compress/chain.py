"""A compression chain: steps {"method": NAME, **params} applied in order (e.g. prune -> distill ->
quantize), each evaluated against the original model, the last one gated on the accuracy budget.

METHODS maps a method name to its config dataclass; the recipes engineer validates a recipe's steps
by building METHODS[name](**params).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kit.compress.cluster import Cluster, cluster
from kit.compress.distill import Distill, distill, train
from kit.compress.gate import GateResult, check
from kit.compress.lowrank import LowRank, lowrank
from kit.compress.ort_quant import OrtInt8Dynamic, OrtInt8Static, preprocess, quantize_onnx, quantize_onnx_dynamic
from kit.compress.prune import Prune, global_sparsity, prune
from kit.compress.qat import QAT, qat
from kit.compress.quantize import Int8Dynamic, Int8Static, QuantizedModel, quantize
from kit.compress.structured import PruneStructured, prune_structured
from kit.data import Dataset, Splits
from kit.errors import EdgeKitError
from kit.evaluate import agreement, count_macs_params, file_size, gzip_size, outputs, per_layer_sqnr, top1, weights_size
from kit.progress import ProgressFn, report

METHODS: dict[str, type] = {
    "prune": Prune,
    "prune_structured": PruneStructured,
    "distill": Distill,
    "lowrank": LowRank,
    "cluster": Cluster,
    "quantize": Int8Static,
    "quantize_dynamic": Int8Dynamic,
    "qat": QAT,
    "ort_quantize": OrtInt8Static,
    "ort_quantize_dynamic": OrtInt8Dynamic,
}
# Methods whose output is no longer an nn.Module: nothing can follow them, and only one runtime runs it.
TERMINAL = {"quantize": "executorch", "quantize_dynamic": "executorch", "qat": "executorch",
            "ort_quantize": "onnxruntime", "ort_quantize_dynamic": "onnxruntime"}
RUNTIMES = ("executorch", "onnxruntime")


@dataclass
class ChainResult:
    model: object  # nn.Module | QuantizedModel | Path (an .onnx file)
    report: dict
    gate_passed: bool
    gate: GateResult
    baseline: dict = field(default_factory=dict)


def build_config(step: dict, index: int = 0):
    """(name, config) from {"method": NAME, **params}, with one-line errors naming the step."""
    if not isinstance(step, dict) or "method" not in step:
        raise EdgeKitError(f"compress step {index}: expected a mapping with 'method' (one of {', '.join(METHODS)})")
    name = step["method"]
    if name not in METHODS:
        raise EdgeKitError(f"compress step {index}: unknown method {name!r}; choose one of {', '.join(METHODS)}")
    cls = METHODS[name]
    params = {k: v for k, v in step.items() if k != "method"}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise EdgeKitError(f"compress step {index} ({name}): no parameter {unknown[0]!r}; parameters are {', '.join(sorted(known))}")
    return name, cls(**params)


def _validate(configs, runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise EdgeKitError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    for i, (name, _) in enumerate(configs):
        if name in TERMINAL and TERMINAL[name] != runtime:
            raise EdgeKitError(f"compress step {i} ({name}) makes a model only {TERMINAL[name]} runs, but the runtime is "
                               f"{runtime}; use {'ort_quantize' if runtime == 'onnxruntime' else 'quantize'} instead")
        if name in TERMINAL and i != len(configs) - 1:
            raise EdgeKitError(f"compress step {i} ({name}) must be the last step: steps after it need a float "
                               f"model; move {configs[i + 1][0]} before it")


def _subset(data: Dataset, n: int | None) -> Dataset:
    if n is None or len(data) <= n:
        return data
    return Dataset(data.x[:n], None if data.y is None else data.y[:n])


def _predictor(model, workers: dict):
    """numpy -> numpy for any chain artifact; eager modules run batched, exported graphs batch 1."""
    if isinstance(model, Path):
        from kit.package.onnx import OrtRunner

        return OrtRunner(model), 1
    module = model.module if isinstance(model, QuantizedModel) else model.eval()

    def run(x):
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    return run, (64 if not isinstance(model, QuantizedModel) or model.batch_dynamic else 1)


def _measure(model, ref_out: np.ndarray, data: Dataset, input_shape) -> dict:
    predict, bs = _predictor(model, {})
    out = outputs(predict, data, bs)
    result = {"agreement": agreement(ref_out, out).to_dict()}
    if data.y is not None:
        result["top1"] = round(top1(out, data.y), 4)
    if isinstance(model, Path):
        result["size"] = {"onnx_bytes": file_size(model), "onnx_gzip_bytes": gzip_size(model)}
    else:
        macs, params = count_macs_params(model, input_shape)
        result.update(macs=macs, param_count=params)
        if isinstance(model, nn.Module):
            result["size"] = weights_size(model)
            result["sparsity"] = global_sparsity(model)
    return result


def build_student(config: Distill, splits: Splits) -> nn.Module:
    from kit.models import _replace_first_conv, load_model, mobilenet_student

    channels = splits.train.x.shape[1]
    if config.student in ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"):
        return mobilenet_student(config.student, config.width_mult, splits.num_classes, in_channels=channels,
                                 stem_stride=config.stem_stride, depth_mult=config.depth_mult)
    if config.student.startswith("torchvision:"):
        model = load_model(config.student, num_classes=splits.num_classes)
        if channels != 3 or config.stem_stride:
            _replace_first_conv(model, channels, config.stem_stride)
        return model
    return load_model(config.student)


def _with_baseline(config: Distill, teacher: nn.Module, student: nn.Module, splits: Splits, eval_data: Dataset,
                   progress: ProgressFn) -> tuple[nn.Module, dict]:
    untrained = copy.deepcopy(student)
    trained = distill(teacher, student, splits.train, config, progress)
    info = {"student_params": sum(p.numel() for p in trained.parameters())}
    if config.baseline and eval_data.y is not None:
        # Same student, same data, same epochs and seed, labels only: what the teacher added.
        cfg = config.train
        if config.transfer_samples:
            # Labels only exist for max_samples images: give the baseline as many optimiser steps.
            n_lab = min(len(splits.train), cfg.max_samples)
            n_all = min(len(splits.train), n_lab + config.transfer_samples)
            steps = lambda n: sum(1 for i in range(0, n, cfg.batch_size) if min(cfg.batch_size, n - i) >= 2)  # noqa: E731
            cfg = dataclasses.replace(cfg, epochs=max(1, round(cfg.epochs * steps(n_all) / steps(n_lab))))
            info["baseline_epochs"] = cfg.epochs
        alone = train(untrained, splits.train, cfg, progress)
        run = lambda m: outputs(_predictor(m, {})[0], eval_data, 64)  # noqa: E731
        info["top1_with_teacher"] = round(top1(run(trained), eval_data.y), 4)
        info["top1_without_teacher"] = round(top1(run(alone), eval_data.y), 4)
        info["top1_teacher"] = round(top1(run(teacher), eval_data.y), 4)
    return trained, info


def run_chain(model: nn.Module, steps: list[dict], splits: Splits, *, budget_top1_drop: float | None = None,
              teacher: nn.Module | None = None, runtime: str = "executorch", progress: ProgressFn = None,
              workdir: str | Path | None = None, eval_samples: int | None = None) -> ChainResult:
    """Apply `steps` to a copy of `model`; evaluate each against the original on `splits.test`."""
    configs = [build_config(s, i) for i, s in enumerate(steps)]
    _validate(configs, runtime)
    if splits.calib is None or len(splits.calib) == 0:
        if any(n in ("quantize", "ort_quantize") for n, _ in configs):
            raise EdgeKitError("calibration set is empty; static int8 needs calibration samples (--data)")
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="edgekit-chain-"))
    workdir.mkdir(parents=True, exist_ok=True)
    original = copy.deepcopy(model).eval()
    input_shape = splits.input_shape
    example = torch.zeros(input_shape)
    eval_data = _subset(splits.test, eval_samples)
    ref_out = outputs(_predictor(original, {})[0], eval_data, 64)
    baseline = _measure(original, ref_out, eval_data, input_shape)
    current = copy.deepcopy(original)
    step_reports = []
    for i, (name, cfg) in enumerate(configs):
        t0 = time.time()
        info: dict = {}
        if name == "prune":
            current, info = prune(current, cfg, splits.train, progress)
        elif name == "prune_structured":
            current, info = prune_structured(current, cfg, example, splits.train, progress)
        elif name == "lowrank":
            current, info = lowrank(current, cfg, splits.train, progress)
        elif name == "cluster":
            current, info = cluster(current, cfg, progress)
        elif name == "distill":
            student = build_student(cfg, splits) if cfg.student else current
            current, info = _with_baseline(cfg, teacher if teacher is not None else original, student, splits,
                                           eval_data, progress)
        elif name in ("quantize", "quantize_dynamic"):
            if getattr(cfg, "keep_float", 0):
                from kit.compress.sensitivity import most_sensitive, quant_sensitivity

                rows = quant_sensitivity(current, splits.calib, eval_data, progress=progress)
                info["sensitivity"] = rows
                cfg = dataclasses.replace(cfg, skip_layers=[*cfg.skip_layers, *most_sensitive(rows, cfg.keep_float)])
            current = quantize(current, cfg, splits.calib if name == "quantize" else None, input_shape)
            info["skip_layers"] = list(cfg.skip_layers)
            info["quantized_ops"] = current.quantized_ops
            info["worst_layers_sqnr"] = per_layer_sqnr(current, splits.calib, max_samples=4)[:8]
        elif name == "qat":
            current = qat(current, cfg, splits.train, progress)
            info["quantized_ops"] = current.quantized_ops
        elif name in ("ort_quantize", "ort_quantize_dynamic"):
            from kit.package.onnx import export_onnx

            fp32 = export_onnx(current, (example,), workdir / "model-fp32.onnx")
            out = workdir / "model-int8.onnx"
            if name == "ort_quantize":
                pre = preprocess(fp32, workdir / "model-fp32-pre.onnx")
                if cfg.keep_float:
                    from kit.compress.sensitivity import most_sensitive, ort_sensitivity

                    rows = ort_sensitivity(pre, splits.calib, eval_data, config=cfg, progress=progress)
                    info["sensitivity"] = rows
                    cfg = dataclasses.replace(cfg, nodes_to_exclude=[*cfg.nodes_to_exclude, *most_sensitive(rows, cfg.keep_float)])
                current = quantize_onnx(pre, cfg, splits.calib, out, preprocessed=True)
                info["nodes_to_exclude"] = list(cfg.nodes_to_exclude)
            else:
                current = quantize_onnx_dynamic(fp32, cfg, out)
            info["fp32_onnx_bytes"] = file_size(fp32)
        measured = _measure(current, ref_out, eval_data, input_shape)
        step_reports.append({"step": i, "method": name, "params": dataclasses.asdict(cfg),
                             "seconds": round(time.time() - t0, 2), "info": info, **measured})
        report(progress, "compress", i + 1, len(configs))
    final = step_reports[-1] if step_reports else baseline
    if "top1" in baseline:
        gate = check(baseline["top1"], final["top1"], budget_top1_drop, "top1")
    else:  # unlabelled: the share of inputs whose top-1 class changed stands in for the accuracy drop
        gate = check(1.0, final["agreement"]["top1_match"], budget_top1_drop, "agreement")
    full_report = {"runtime": runtime, "input_shape": list(input_shape), "data": splits.name,
                   "eval_samples": len(eval_data), "baseline": baseline, "steps": step_reports,
                   "gate": {**gate.to_dict(), "message": gate.message}}
    return ChainResult(model=current, report=full_report, gate_passed=gate.passed, gate=gate, baseline=baseline)
