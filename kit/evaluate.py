"""Evaluation: accuracy on labelled data, agreement with the original model's outputs (which
works on unlabelled data too), and size figures. Every predictor is a numpy -> numpy callable,
so a torch module, a .pte and an .onnx are judged by the same code. A model with several inputs
takes a tuple of arrays; one with several outputs returns a list of arrays (kit.io: flattened
leaves in a fixed order, with names), and agreement is then measured output by output."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from kit.data import Dataset
from kit.errors import EdgeKitError
from kit.io import concat, is_multi, names_of, to_numpy_outputs, to_torch

Predictor = Callable[[np.ndarray], np.ndarray]  # (several inputs: tuple in; several outputs: list out)


def torch_predictor(module: torch.nn.Module) -> Predictor:
    """numpy -> numpy over a torch module (or a QuantizedModel), without autograd; any batch size."""
    if hasattr(module, "eval"):  # (a converted PT2E graph's eval() switches in place and returns None)
        module = module.eval() or module

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            if is_multi(x):
                return to_numpy_outputs(module(*to_torch(x)))
            out = module(torch.from_numpy(np.ascontiguousarray(x)))
            return out.numpy() if torch.is_tensor(out) else to_numpy_outputs(out)

    return run


def outputs(predict: Predictor, data: Dataset, batch_size: int = 1) -> np.ndarray:
    """Run `predict` over `data` (batch 1 by default: exported artifacts have a fixed batch of one)."""
    if len(data) == 0:
        raise EdgeKitError("evaluation set is empty; give data with at least one sample")
    return concat([predict(xb) for xb, _ in data.batches(batch_size)])


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    if is_multi(logits):  # several outputs: the first is the classifier's
        logits = logits[0]
    return float(np.mean(np.argmax(logits, 1) == labels))


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of `other` against `reference`, in dB (several outputs:
    the worst output's)."""
    if is_multi(reference):
        return min(sqnr_db(r, o) for r, o in zip(reference, other))
    noise = np.sum((reference.astype(np.float64) - other.astype(np.float64)) ** 2)
    signal = np.sum(reference.astype(np.float64) ** 2)
    if noise == 0:
        return float("inf")
    return float(10 * np.log10(signal / noise))


@dataclass
class Agreement:
    top1_match: float
    sqnr_db: float
    max_abs_err: float
    per_output: list | None = None  # several outputs: [{name, top1_match, sqnr_db, max_abs_err}]

    def to_dict(self):
        d = asdict(self)
        if self.per_output is None:
            d.pop("per_output")
        return d


def _output_row(name: str, reference: np.ndarray, other: np.ndarray) -> dict:
    reference, other = np.asarray(reference), np.asarray(other)
    if reference.shape != other.shape:
        raise EdgeKitError(f"output {name!r}: shape {list(other.shape)} differs from the original's {list(reference.shape)}")
    # top-1 only where axis 1 holds classes (a mask of one channel or a score has none to compare)
    match = float(np.mean(np.argmax(reference, 1) == np.argmax(other, 1))) if reference.ndim >= 2 and reference.shape[1] > 1 else None
    return {"name": name, "top1_match": match, "sqnr_db": sqnr_db(reference, other),
            "max_abs_err": float(np.max(np.abs(reference - other))) if reference.size else 0.0}


def agreement(reference: np.ndarray, other: np.ndarray) -> Agreement:
    """Agreement of `other` with `reference`. Several outputs: the first output's top-1 match
    (the first that has a class axis) and max abs error, the worst output's SQNR, and every
    output's figures in `per_output`, so a gate's SQNR floor applies to the worst output."""
    if is_multi(reference):
        if not is_multi(other) or len(other) != len(reference):
            n = len(other) if is_multi(other) else 1
            raise EdgeKitError(f"the model gives {n} output(s) where the original gives {len(reference)}")
        names = names_of(reference, len(reference))
        rows = [_output_row(n, r, o) for n, r, o in zip(names, reference, other)]
        matches = [r["top1_match"] for r in rows if r["top1_match"] is not None]
        return Agreement(top1_match=matches[0] if matches else 1.0, sqnr_db=min(r["sqnr_db"] for r in rows),
                         max_abs_err=rows[0]["max_abs_err"], per_output=rows)
    return Agreement(
        top1_match=float(np.mean(np.argmax(reference, 1) == np.argmax(other, 1))),
        sqnr_db=sqnr_db(reference, other),
        max_abs_err=float(np.max(np.abs(reference - other))),
    )


def evaluate_artifact(model_file, predict: Predictor, reference: np.ndarray, data: Dataset,
                      delegation: dict | None = None) -> dict:
    """A packaged model file judged on its own runtime (`predict`, batch 1) against the original
    model's outputs `reference` on `data`: file sizes, agreement, top-1 when labelled."""
    out = outputs(predict, data, 1)
    result = {"file": str(model_file), "bytes": file_size(model_file), "gzip_bytes": gzip_size(model_file),
              "agreement": agreement(reference, out).to_dict(), "delegation": delegation}
    if data.y is not None:
        result["top1"] = round(top1(out, data.y), 4)
    return result


def accuracy(predict: Predictor, data: Dataset) -> float:
    if data.y is None:
        raise EdgeKitError("accuracy needs labels; this data set has none (use agreement() against the original model)")
    return top1(outputs(predict, data), data.y)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass, from torch's own FlopCounterMode (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        if input_shape and isinstance(input_shape[0], (tuple, list)):  # several inputs: one shape each
            module.eval()(*(torch.zeros(s) for s in input_shape))
        else:
            module.eval()(torch.zeros(input_shape))
    return int(counter.get_total_flops() // 2)


def count_macs_params(model, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """MACs and parameters of a float module, or of a QuantizedModel's float graph (same arithmetic)."""
    module = getattr(model, "float_graph", None) or getattr(model, "module", None) or model
    try:
        macs = count_macs(module, input_shape)
    except Exception:  # some graph modules refuse FlopCounterMode; the float eager model is the fallback
        macs = -1
    return macs, count_params(module)


def file_size(path) -> int:
    from pathlib import Path

    return Path(path).stat().st_size


def gzip_size(path_or_bytes) -> int:
    """Size after gzip -9: what zeros, shared values and clustering buy once a file is compressed
    for download (a dense .pte/.onnx does not shrink by itself)."""
    import gzip
    from pathlib import Path

    data = path_or_bytes if isinstance(path_or_bytes, (bytes, bytearray)) else Path(path_or_bytes).read_bytes()
    return len(gzip.compress(bytes(data), compresslevel=9))


def weights_size(module: torch.nn.Module) -> dict:
    """Bytes of the float weights as stored (raw little-endian float32) and after gzip."""
    raw = b"".join(t.detach().contiguous().float().numpy().tobytes() for t in module.state_dict().values()
                   if torch.is_tensor(t) and t.is_floating_point())
    return {"weight_bytes": len(raw), "weight_gzip_bytes": gzip_size(raw)}


def compare(reference: Predictor, candidate: Predictor, data: Dataset, max_samples: int | None = None) -> dict:
    """top-1 (when labelled) and agreement with the reference; works on unlabelled data too."""
    if max_samples is not None and len(data) > max_samples:
        data = data.head(max_samples)
    ref = outputs(reference, data)
    out = outputs(candidate, data)
    result = {"samples": len(data), "agreement": agreement(ref, out).to_dict()}
    if data.y is not None:
        result["top1"] = top1(out, data.y)
        result["reference_top1"] = top1(ref, data.y)
    return result


def per_layer_sqnr(qmodel, data: Dataset, max_samples: int = 8) -> list[dict]:
    """SQNR (dB) of each quantized layer's output against the float graph, worst first (see
    layer_sqnr_report, which also names the nodes it could not compare)."""
    return layer_sqnr_report(qmodel, data, max_samples)[0]


def _is_tensor_tree(value) -> bool:
    if torch.is_tensor(value):
        return value.is_floating_point()
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_is_tensor_tree(v) for v in value)
    if isinstance(value, dict):
        return bool(value) and all(_is_tensor_tree(v) for v in value.values())
    return False


def layer_sqnr_report(qmodel, data: Dataset, max_samples: int = 8) -> tuple[list[dict], list[dict]]:
    """(rows, skipped): rows {layer, node, sqnr_db} worst first, from torchao's PT2E numeric debugger
    (loggers on matching nodes of both graphs); skipped {node, reason} for the nodes left out.

    Left out: nodes whose outputs are not float tensors (`sym_size` of `x.view(x.size(0), -1)` in a
    batch-dynamic graph logs a Python int, on which torchao's comparison raises), nodes whose two
    outputs cannot be compared (shapes differ), and Conv outputs that feed a BatchNorm in the float
    graph (BN is folded in the quantized graph, so the comparable point is after it)."""
    from torchao.quantization.pt2e import compare_results, extract_results_from_loggers, prepare_for_propagation_comparison

    if getattr(qmodel, "float_graph", None) is None:
        raise EdgeKitError("per-layer SQNR needs a QuantizedModel from kit.compress.quantize/qat (it keeps the float graph)")
    if len(data) == 0:
        raise EdgeKitError("per-layer SQNR: evaluation set is empty")
    ref = prepare_for_propagation_comparison(qmodel.float_graph)
    act = prepare_for_propagation_comparison(qmodel.module)
    with torch.no_grad():
        for xb, _ in Dataset(data.head(max_samples).x, None).batches(1):
            x = to_torch(xb)
            ref(*x)
            act(*x)
    feeds_bn = set()
    for n in qmodel.float_graph.graph.nodes:
        if "batch_norm" in str(n.target) and n.args:
            feeds_bn.add(n.args[0].name)
    ref_results, act_results = extract_results_from_loggers(ref), extract_results_from_loggers(act)
    rows, skipped = [], []
    for key, (ref_name, ref_stack, ref_stats) in ref_results.items():
        if key not in act_results:
            continue
        if not (all(_is_tensor_tree(v) for v in ref_stats) and all(_is_tensor_tree(v) for v in act_results[key][2])):
            skipped.append({"node": ref_name or key.name, "reason": "output is not a float tensor (shape arithmetic)"})
            continue
        try:
            summary = compare_results({key: (ref_name, ref_stack, ref_stats)}, {key: act_results[key]})[key]
        except Exception as e:  # noqa: BLE001 - a diagnostic never stops a build; the node is reported as skipped
            cause = e.__cause__ or e
            skipped.append({"node": ref_name or key.name, "reason": f"not comparable ({str(cause).splitlines()[0][:120]})"})
            continue
        if summary.ref_node_name in feeds_bn or key.name in feeds_bn:
            continue
        values = [float(r.sqnr) for r in summary.results]
        if not values:
            continue
        rows.append({"layer": summary.ref_module_stack, "node": key.name, "sqnr_db": round(float(np.mean(values)), 2)})
    rows.sort(key=lambda r: r["sqnr_db"])
    return rows, skipped
