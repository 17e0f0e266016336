"""A compression chain: passes applied in order (e.g. prune -> distill -> quantize), each evaluated
against the original model, the last one gated on the accuracy budget.

Steps are config objects (kit.compress.registry.METHODS) or their dict spelling
{"method": NAME, **params}, parsed through the same validator as a recipe's `compress`.
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kit.compress.base import StepContext
from kit.compress.checks import check_finite
from kit.compress.gate import GateResult, judge, load_metric, run_metric
from kit.compress.prune import global_sparsity
from kit.compress.quantize import QuantizedModel
from kit.compress.registry import METHODS, parse_chain
from kit.data import Dataset, Splits
from kit.errors import EdgeKitError
from kit.evaluate import agreement, count_macs_params, file_size, gzip_size, outputs, top1, torch_predictor, weights_size
from kit.progress import ProgressFn, report
from kit.splits import class_labels

__all__ = ["METHODS", "ChainResult", "run_chain"]


@dataclass
class ChainResult:
    model: object  # nn.Module | QuantizedModel | Path (an .onnx file)
    report: dict
    gate_passed: bool
    gate: GateResult
    baseline: dict = field(default_factory=dict)
    eval_data: Any = None  # the Dataset every step was judged on
    reference: Any = None  # the original model's outputs on eval_data (np.ndarray; several outputs: kit.io.Outputs)


def subset(data: Dataset, n: int | None) -> Dataset:
    return data.head(n)


def _outputs(model, data: Dataset) -> np.ndarray:
    """Outputs of any chain artifact; eager modules and batch-dynamic graphs run batched. Several
    outputs: a kit.io.Outputs list (every output compared by _measure's agreement)."""
    if isinstance(model, Path):
        from kit.package.onnx import OrtRunner

        return outputs(OrtRunner(model), data, 1)
    batched = not isinstance(model, QuantizedModel) or model.batch_dynamic
    return outputs(torch_predictor(model), data, 64 if batched else 1)


def _measure(model, ref_out: np.ndarray, data: Dataset, input_shape, metric: str | None = None, task=None) -> dict:
    out = _outputs(model, data)
    result = {"agreement": agreement(ref_out, out).to_dict()}
    if class_labels(data.y):  # masks / detection targets are judged by the task's metric only
        result["top1"] = round(top1(out, data.y), 4)
    if metric:  # a user or task metric (budget.metric) on the same outputs (vs ref_out when unlabelled)
        result["metric"] = {"name": metric, "value": run_metric(metric, out, data.y, reference=ref_out, task=task)}
    if isinstance(model, Path):
        result["size"] = {"onnx_bytes": file_size(model), "onnx_gzip_bytes": gzip_size(model)}
    else:
        macs, params = count_macs_params(model, input_shape)
        result.update(macs=macs, param_count=params)
        if isinstance(model, nn.Module):
            result["size"] = weights_size(model)
            result["sparsity"] = global_sparsity(model)
    return result


def run_chain(model: nn.Module, steps: list, splits: Splits, *, budget_top1_drop: float | None = None, budget=None,
              teacher: nn.Module | None = None, runtime: str = "executorch", progress: ProgressFn = None,
              workdir: str | Path | None = None, eval_samples: int | None = None, task=None) -> ChainResult:
    """Apply `steps` to a copy of `model`; evaluate each against the original on `splits.test`.

    The last step is gated on `budget` (a kit.recipes.schema.Budget: top-1 drop, agreement and SQNR
    floors, a user metric; see kit.compress.gate) or, in the older spelling, `budget_top1_drop` (points).
    `task` (kit.tasks.spec.Task): handed to a task metric (its postprocess and params)."""
    metric = getattr(budget, "metric", None)
    if metric:
        load_metric(metric)  # a bad spec fails before any work
    configs = parse_chain(steps, runtime)
    if any(c.needs_calibration for c in configs) and (splits.calib is None or len(splits.calib) == 0):
        raise EdgeKitError("calibration set is empty; static int8 needs calibration samples (--data)")
    if any(c.needs_calibration for c in configs):
        for part in splits.calib.per_input():  # several inputs: each array on its own
            check_finite(part, f"calibration data ({splits.name!r} calibration split)")
    for part in splits.test.per_input():
        check_finite(part, f"evaluation data ({splits.name!r} test split)")
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="edgekit-chain-"))
    workdir.mkdir(parents=True, exist_ok=True)
    original = copy.deepcopy(model).eval()
    input_shape = splits.input_shape
    eval_data = subset(splits.test, eval_samples)
    example = torch.zeros(input_shape)
    if splits.train.multi_input:  # several inputs: a zero tensor each; MACs counted on all of them
        example = tuple(torch.zeros(s) for s in splits.input_shapes)
        input_shape = splits.input_shapes
    ctx = StepContext(splits=splits, example=example, eval_data=eval_data, original=original,
                      teacher=teacher, workdir=workdir, progress=progress)
    ref_out = _outputs(original, eval_data)
    baseline = _measure(original, ref_out, eval_data, input_shape, metric, task)
    current = copy.deepcopy(original)
    step_reports = []
    for i, cfg in enumerate(configs):
        t0 = time.time()
        result = cfg.apply(current, ctx)
        current, applied = result.model, result.config or cfg
        measured = _measure(current, ref_out, eval_data, input_shape, metric, task)
        step_reports.append({"step": i, "method": cfg.method, "params": applied.params(),
                             "seconds": round(time.time() - t0, 2), "info": result.info, **measured})
        report(progress, "compress", i + 1, len(configs))
    gate = judge(baseline, step_reports[-1] if step_reports else baseline, budget if budget is not None else budget_top1_drop,
                 samples=len(eval_data))
    full_report = {"runtime": runtime, "input_shape": list(splits.input_shape), "data": splits.name,
                   **({"input_shapes": [list(s) for s in input_shape]} if splits.train.multi_input else {}),
                   "eval_samples": len(eval_data), "baseline": baseline, "steps": step_reports,
                   "gate": gate.to_dict()}
    return ChainResult(model=current, report=full_report, gate_passed=gate.passed, gate=gate, baseline=baseline,
                       eval_data=eval_data, reference=ref_out)
