"""Per-layer sensitivity: which layers hurt when quantized (mixed precision keeps those in float)
and how far each layer can be pruned (per-layer pruning ratios).

- XNNPACK: one layer at a time is quantized with torch's own fake-quant ops in the XNNPACK int8
  scheme (weights symmetric per-channel [-127, 127], input activations asymmetric per-tensor int8
  from calibration ranges). Emulated in eager mode because one PT2E prepare per layer costs tens
  of seconds; the chosen layers then go to the real quantizer as `skip_layers`.
- ONNX Runtime: kit.compress.ort_quant.ort_sensitivity (one node at a time through ORT itself).
- Pruning: each layer alone pruned at several ratios (torch.nn.utils.prune L1), accuracy measured.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as tprune

from kit.data import Dataset
from kit.errors import EdgeKitError
from kit.evaluate import agreement, outputs, top1, torch_predictor
from kit.progress import ProgressFn, report

TARGETS = (nn.Conv2d, nn.Linear)


def head(data: Dataset, n: int) -> Dataset:
    if data is None or len(data) == 0:
        raise EdgeKitError("sensitivity: the data set is empty; give samples with --data")
    return Dataset(data.x[:n], None if data.y is None else data.y[:n])


def sensitivity_row(name: str, kind: str, ref: np.ndarray, out: np.ndarray, labels) -> dict:
    a = agreement(ref, out)
    row = {"layer": name, "type": kind, "sqnr_db": round(a.sqnr_db, 2) if np.isfinite(a.sqnr_db) else 999.0,
           "top1_match": round(a.top1_match, 4)}
    if labels is not None:
        row["top1"] = round(top1(out, labels), 4)
    return row


def quant_sensitivity(model: nn.Module, calib: Dataset, data: Dataset, *, calib_samples: int = 64,
                      eval_samples: int = 128, progress: ProgressFn = None) -> list[dict]:
    """Rows {layer, type, sqnr_db, top1_match[, top1]}, most sensitive (lowest SQNR) first."""
    model = copy.deepcopy(model).eval()
    calib, data = head(calib, calib_samples), head(data, eval_samples)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, TARGETS)]
    if not layers:
        raise EdgeKitError(f"sensitivity: {type(model).__name__} has no Conv2d/Linear layer to quantize")
    ranges: dict[str, list[float]] = {}

    def observe(name):
        def hook(mod, args):
            x = args[0].detach()
            lo, hi = ranges.get(name, [float("inf"), float("-inf")])
            ranges[name] = [min(lo, float(x.min())), max(hi, float(x.max()))]
        return hook

    handles = [m.register_forward_pre_hook(observe(n)) for n, m in layers]
    outputs(torch_predictor(model), calib, batch_size=32)
    for h in handles:
        h.remove()
    ref = outputs(torch_predictor(model), data, batch_size=32)
    rows = []
    for i, (name, m) in enumerate(layers):
        lo, hi = min(ranges[name][0], 0.0), max(ranges[name][1], 0.0)
        scale = max((hi - lo) / 255.0, 2**-12)
        zp = int(np.clip(round(-128 - lo / scale), -128, 127))

        def fq_input(mod, args, scale=scale, zp=zp):
            return (torch.fake_quantize_per_tensor_affine(args[0], scale, zp, -128, 127),) + tuple(args[1:])

        w = m.weight.data
        w_scale = (w.abs().amax(dim=tuple(range(1, w.dim()))) / 127.0).clamp(min=2**-12)
        m.weight.data = torch.fake_quantize_per_channel_affine(w, w_scale, torch.zeros_like(w_scale, dtype=torch.int32), 0, -127, 127)
        handle = m.register_forward_pre_hook(fq_input)
        try:
            out = outputs(torch_predictor(model), data, batch_size=32)
        finally:
            handle.remove()
            m.weight.data = w
        rows.append(sensitivity_row(name, type(m).__name__, ref, out, data.y))
        report(progress, "quant sensitivity", i + 1, len(layers))
    rows.sort(key=lambda r: r["sqnr_db"])
    return rows


def most_sensitive(rows: list[dict], count: int = 0, min_sqnr_db: float | None = None) -> list[str]:
    """Names of the `count` worst layers, plus any below `min_sqnr_db`."""
    chosen = [r["layer"] for r in rows[:count]]
    if min_sqnr_db is not None:
        chosen += [r["layer"] for r in rows if r["sqnr_db"] < min_sqnr_db and r["layer"] not in chosen]
    return chosen


def prune_sensitivity(model: nn.Module, data: Dataset, ratios=(0.25, 0.5, 0.75, 0.9), *, eval_samples: int = 256,
                      tolerance_points: float = 1.0, progress: ProgressFn = None) -> dict:
    """For each Conv/Linear layer pruned alone (L1 unstructured) at each ratio: accuracy (or top-1
    agreement without labels). Suggests per layer the largest ratio within `tolerance_points`."""
    for r in ratios:
        if not 0.0 < r < 1.0:
            raise EdgeKitError(f"prune sensitivity ratio {r}: ratios must be in (0, 1)")
    data = head(data, eval_samples)
    base = copy.deepcopy(model).eval()
    ref = outputs(torch_predictor(base), data, batch_size=64)
    base_score = top1(ref, data.y) if data.y is not None else 1.0
    layers = [n for n, m in base.named_modules() if isinstance(m, TARGETS)]
    table, suggested = {}, {}
    for i, name in enumerate(layers):
        table[name] = {}
        best = 0.0
        for r in sorted(ratios):
            m = copy.deepcopy(base)
            tprune.l1_unstructured(m.get_submodule(name), "weight", amount=r)
            out = outputs(torch_predictor(m), data, batch_size=64)
            score = top1(out, data.y) if data.y is not None else agreement(ref, out).top1_match
            drop = round(100 * (base_score - score), 2)
            table[name][str(r)] = drop
            if drop <= tolerance_points:
                best = r
        suggested[name] = best
        report(progress, "prune sensitivity", i + 1, len(layers))
    return {"basis": "top1" if data.y is not None else "agreement", "drop_points": table, "suggested": suggested}


def block_sensitivity(model: nn.Module, data: Dataset, example: torch.Tensor, ratios=(0.25, 0.5), *,
                      teacher: nn.Module | None = None, eval_samples: int = 48, threads: int = 1,
                      progress: ProgressFn = None) -> list[dict]:
    """Structured pruning sensitivity per channel group (MobileNetV2: per inverted-residual block's
    expansion channels, per stage's residual channels): each group alone pruned (DepGraph) at each
    ratio, agreement lost and KL against `teacher` (default: the model itself), MACs and host ms
    saved; least harm per MAC first. See kit.compress.netadapt.scan."""
    from kit.compress.latency_table import LatencyTable
    from kit.compress.netadapt import _logits, scan

    x = head(data, eval_samples).x
    ref = _logits(copy.deepcopy(teacher if teacher is not None else model).eval(), x)
    return scan(copy.deepcopy(model).eval(), ref, x, example, ratios, LatencyTable(threads=threads), progress=progress)


__all__ = ["quant_sensitivity", "most_sensitive", "prune_sensitivity", "block_sensitivity", "sensitivity_row", "head"]
