"""Int8 quantization for ExecuTorch/XNNPACK via PT2E (torchao's prepare_pt2e/convert_pt2e).

`quantize(model, Int8Static(per_channel=True), calib)` returns a `QuantizedModel`: the converted
graph module (still a torch module, runnable on the host for accuracy checks) plus the example
input it was traced with, ready for `package(..., target="executorch")`.

Mixed precision: `skip_layers` names modules (e.g. "features.0") that stay in float; the XNNPACK
quantizer's filter function leaves their ops unannotated, so XNNPACK runs them as fp32.

What keeps a real model's accuracy (measured on the real MobileNetV2 and EfficientNet-Lite1, see
benchmarks/real_models.py): Conv+ReLU6 quantized as one op (kit.compress.xnnpack_patterns), weights
rounded to their grid with empirical bias correction (kit.compress.weight_correction), activation
ranges by percentile, the percentile chosen per model (`observer: auto`, kit.compress.observers),
and graph outputs never clipped.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from kit.compress.base import Pass, StepContext, StepResult
from kit.compress.checks import check_finite
from kit.data import Dataset
from kit.errors import EdgeKitError

if TYPE_CHECKING:
    import torch
    from torch import nn

OBSERVERS = ("auto", "percentile", "mse", "histogram", "minmax", "moving_average")
# `auto` tries these (observer, percentile) on one calibration and keeps the best output SQNR
AUTO_CANDIDATES = (("percentile", 99.9), ("percentile", 99.99), ("percentile", 99.999), ("minmax", 0.0))


class _XnnpackInt8(Pass):
    """Facts and the chain step shared by static and dynamic PT2E int8."""

    runtimes = ("executorch",)
    terminal = True

    def apply(self, model, ctx: StepContext) -> StepResult:
        from kit.evaluate import layer_sqnr_report

        cfg, info = self, {}
        calib = ctx.splits.calib if self.needs_calibration else None
        if getattr(cfg, "keep_float", 0) == "auto":  # accuracy-aware mixed precision on held-out calibration inputs
            from kit.compress.mixed_precision import pt2e_auto

            quantized, cfg, info["mixed_precision"] = pt2e_auto(model, cfg, calib, ctx.input_shape, quantize, ctx.progress)
        elif getattr(cfg, "keep_float", 0):
            from kit.compress.sensitivity import most_sensitive, quant_sensitivity

            rows = quant_sensitivity(model, ctx.splits.calib, ctx.eval_data, progress=ctx.progress)
            info["sensitivity"] = rows
            cfg = dataclasses.replace(cfg, skip_layers=[*cfg.skip_layers, *most_sensitive(rows, cfg.keep_float)])
        if "mixed_precision" not in info:
            quantized = quantize(model, cfg, calib, ctx.input_shape, progress=ctx.progress)
        from kit.compress.int8_share import artifact_share

        info["skip_layers"] = list(cfg.skip_layers)
        info["quantized_ops"] = quantized.quantized_ops
        info.update(quantized.details)
        info.update(artifact_share(quantized))
        rows, skipped = layer_sqnr_report(quantized, ctx.splits.calib, max_samples=4)
        info["worst_layers_sqnr"] = rows[:8]
        if skipped:  # nodes the per-layer comparison left out (shape arithmetic such as sym_size)
            info["sqnr_skipped_nodes"] = skipped
        return StepResult(quantized, info, cfg)


@dataclass
class Int8Static(_XnnpackInt8):
    """Static int8: weights and activations int8, activation ranges from calibration data."""

    needs_calibration = True

    per_channel: bool = True
    calib_batches: int = 8
    batch_size: int = 32
    observer: str = "auto"  # activation ranges: auto | percentile | mse | histogram | minmax | moving_average
    # auto: after one percentile for all, each activation's own by the int8 output (kit.compress.range_search)
    range_search: Literal["per_tensor", "none"] = "per_tensor"
    range_search_seconds: float = 300.0  # cap on that search (the best choice so far is kept)
    percentile: float = 99.99  # for observer=percentile
    bias_correction: bool = True  # weights rounded to their int8 grid, rounding's mean shift taken out of the biases
    correction_samples: int = 64  # calibration inputs the bias correction uses (one batch)
    # how weights reach their grid with bias_correction: gptq (input-aware, kit.compress.gptq_rounding) | nearest.
    # gptq is the default: output SQNR up on both real models and both runtimes (MobileNetV2 +1.1 dB .pte,
    # +0.2 dB .onnx; EfficientNet-Lite1 +2.4 / +2.6 dB), agreement within sampling noise; layers it cannot
    # handle (grouped, non-depthwise convs) fall back to nearest and are named in the report.
    rounding: Literal["gptq", "nearest"] = "gptq"
    skip_layers: list[str] = field(default_factory=list)  # module names kept in float
    # chain: also keep this many most sensitive layers in float (sensitivity scan), or `auto`: the
    # fewest layers in float until the targets hold on held-out calibration inputs (kit.compress.mixed_precision)
    keep_float: int | Literal["auto"] = 0
    min_int8_macs: float = 0.95  # auto: never less than this share of the MACs in int8
    target_sqnr_db: float | None = 18.0  # auto: output SQNR to reach on the held-out inputs
    target_agreement: float | None = 0.90  # auto: top-1 agreement to reach on the held-out inputs
    holdout: int = 16  # auto: calibration inputs held out (not calibrated on) to check each candidate
    max_keep_float: int = 8  # auto: at most this many layers in float
    max_trials: int = 12  # auto: at most this many re-quantizations
    method: Literal["quantize"] = "quantize"

    def __post_init__(self):
        from kit.compress.mixed_precision import check_settings

        check_settings("quantize", self.keep_float, self.min_int8_macs, self.holdout, self.max_keep_float)
        _check_observer(self.observer)
        if not 50.0 < self.percentile <= 100.0:
            raise EdgeKitError(f"quantize percentile={self.percentile}: give a value in (50, 100], e.g. 99.99")
        if self.range_search not in ("per_tensor", "none"):
            raise EdgeKitError(f"quantize range_search={self.range_search!r}: choose per_tensor or none")
        from kit.compress.gptq_rounding import check_rounding

        check_rounding("quantize", self.rounding)
        if self.correction_samples < 1:
            raise EdgeKitError(f"quantize correction_samples={self.correction_samples}: must be >= 1")
        if self.calib_batches < 1 or self.batch_size < 1:
            raise EdgeKitError(f"quantize calib_batches={self.calib_batches} batch_size={self.batch_size}: both must be >= 1")


@dataclass
class Int8Dynamic(_XnnpackInt8):
    """Dynamic int8: int8 weights, activation scales computed per call. XNNPACK's dynamic config
    covers Linear and (measured on MobileNetV2) Conv too; a conv-free model keeps only its Linears."""

    per_channel: bool = True
    skip_layers: list[str] = field(default_factory=list)
    method: Literal["quantize_dynamic"] = "quantize_dynamic"


@dataclass
class QuantizedModel:
    module: nn.Module  # the converted PT2E graph module (q/dq ops around float ops)
    example_input: tuple[torch.Tensor, ...]
    config: object
    float_graph: nn.Module | None = None  # the exported float graph before prepare (for per-layer SQNR)
    quantized_ops: int = 0  # number of quantize ops inserted
    batch_dynamic: bool = False  # True: the graph accepts any batch size (host evaluation can batch)
    details: dict = field(default_factory=dict)  # what the methods did (bias correction, chosen ranges)

    def __call__(self, *x):  # several inputs: several arguments
        return self.module(*x)

    def eval(self):
        return self


def _check_observer(name: str) -> None:
    if name not in OBSERVERS:
        raise EdgeKitError(f"observer={name!r}: choose one of {', '.join(OBSERVERS)}")


def xnnpack_config(per_channel: bool, *, dynamic: bool = False, qat: bool = False, observer: str = "histogram",
                   percentile: float = 99.99):
    """The XNNPACK symmetric config, with the activation observer swapped for the one asked for
    (`auto`, `percentile` and `mse` all calibrate with kit.compress.observers.RangeObserver)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e import MinMaxObserver, MovingAverageMinMaxObserver

    from kit.compress.observers import RangeObserver

    _check_observer(observer)
    cfg = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=dynamic, is_qat=qat)
    if dynamic or qat or observer == "histogram":  # histogram is XNNPACK's default for static PTQ
        return cfg
    if observer in ("auto", "percentile", "mse"):
        mode = "percentile" if observer == "auto" else observer
        obs = RangeObserver.with_args(eps=2**-12, mode=mode, percentile=percentile)
    else:
        obs = {"minmax": MinMaxObserver, "moving_average": MovingAverageMinMaxObserver}[observer].with_args(eps=2**-12)
    act = dataclasses.replace(cfg.input_activation, observer_or_fake_quant_ctr=obs)
    return dataclasses.replace(cfg, input_activation=act, output_activation=act)


def xnnpack_quantizer(config, skip_layers=(), only_layers=None):
    """An XNNPACKQuantizer (with Conv/Linear+ReLU6 fused, kit.compress.xnnpack_patterns) with
    `config` everywhere except `skip_layers` (or only on `only_layers`)."""
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    from kit.compress.xnnpack_patterns import KitXnnpackQuantizer

    quantizer = KitXnnpackQuantizer().set_global(config)
    skip = [get_module_name_filter(name) for name in skip_layers]
    only = None if only_layers is None else [get_module_name_filter(name) for name in only_layers]
    if skip or only is not None:
        def keep(node) -> bool:
            if any(f(node) for f in skip):
                return False
            return only is None or any(f(node) for f in only)

        quantizer.set_filter_function(keep)
    return quantizer


def check_layer_names(model: nn.Module, names, field_name: str) -> None:
    known = dict(model.named_modules())
    missing = [n for n in names if n not in known]
    if missing:
        sample = ", ".join(n for n in list(known)[1:6])
        raise EdgeKitError(f"{field_name}: no module named {missing[0]!r} in {type(model).__name__} (names look like: {sample})")


def export_for_quant(model: nn.Module, example: tuple[torch.Tensor, ...]):
    """Export with a dynamic batch when the model allows it (batched calibration and evaluation are
    far quicker), else with the example's fixed shape. Returns (graph module, batch_is_dynamic)."""
    import torch

    x = example[0]
    try:
        batch = torch.export.Dim("batch", min=1, max=4096)
        if len(example) > 1:  # several inputs: every one batch-dynamic, the same batch
            graph = torch.export.export(model.eval(), tuple(a.expand(2, *a.shape[1:]).contiguous() for a in example),
                                        dynamic_shapes=tuple({0: batch} for _ in example), strict=False).module()
            return graph, True
        graph = torch.export.export(model.eval(), (x.expand(2, *x.shape[1:]).contiguous(),),
                                    dynamic_shapes=({0: batch},), strict=False).module()
        return graph, True
    except Exception:
        pass
    try:
        return torch.export.export(model.eval(), example, strict=False).module(), False
    except Exception as e:
        raise EdgeKitError(
            f"torch.export cannot trace {type(model).__name__} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
            "remove data-dependent Python control flow from forward() or wrap it in torch.cond"
        ) from e


def count_quantize_ops(graph: nn.Module) -> int:
    return sum(1 for n in graph.graph.nodes if n.op == "call_function" and "quantize_per" in str(n.target)
               and "dequantize" not in str(n.target))


def example_from(calib: Dataset | None, input_shape: tuple[int, ...] | None) -> tuple[torch.Tensor, ...]:
    import torch

    if calib is not None and calib.multi_input and len(calib):  # several inputs: a zero tensor each
        return tuple(torch.zeros((1, *a.shape[1:]), dtype=torch.float32) for a in calib.x)
    if input_shape is None:
        if calib is None or len(calib) == 0:
            raise EdgeKitError("calibration set is empty; give --data with at least one sample (or an input shape for dynamic int8)")
        input_shape = (1, *calib.x.shape[1:])
    return (torch.zeros(input_shape, dtype=torch.float32),)


def calibrate(prepared: nn.Module, calib: Dataset | None, max_samples: int, batch_size: int = 1) -> int:
    if calib is None or len(calib) == 0:
        raise EdgeKitError("calibration set is empty; static int8 needs calibration samples (--data)")
    import torch

    data = Dataset(calib.head(max_samples).x, None)
    with torch.no_grad():
        # A graph exported with a fixed batch of one is calibrated sample by sample.
        for xb, _ in data.batches(batch_size):
            if data.multi_input:
                from kit.io import to_torch

                prepared(*to_torch(xb))
                continue
            prepared(torch.from_numpy(np.ascontiguousarray(xb)))
    return len(data)


def prepare(graph: nn.Module, quantizer, model_name: str, qat: bool = False):
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

    try:
        prepared = (prepare_qat_pt2e if qat else prepare_pt2e)(graph, quantizer)
    except Exception as e:
        raise EdgeKitError(f"the XNNPACK quantizer cannot handle {model_name}: {str(e).splitlines()[0][:200]}; "
                           "keep that layer in float with skip_layers") from e
    return prepared


def convert(prepared: nn.Module, model_name: str, what: str) -> nn.Module:
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)  # so evaluators may call .eval() on it
    if count_quantize_ops(converted) == 0:
        raise EdgeKitError(f"{what}: the XNNPACK quantizer found no layer of {model_name} it can quantize "
                           "(it handles Conv/Linear/Add/Mul/pooling...); check skip_layers or use another method")
    return converted


def quantize(model: nn.Module, config: Int8Static | Int8Dynamic, calib: Dataset | None,
             input_shape: tuple[int, ...] | None = None, progress=None) -> QuantizedModel:
    """Quantize `model` for XNNPACK with PT2E and calibrate it on `calib`."""
    import torch

    name = type(model).__name__
    example = example_from(calib, input_shape)
    dynamic = isinstance(config, Int8Dynamic)
    check_layer_names(model, config.skip_layers, "quantize skip_layers")
    observer = "histogram" if dynamic else config.observer
    qconfig = xnnpack_config(config.per_channel, dynamic=dynamic, observer=observer,
                             percentile=getattr(config, "percentile", 99.99))
    details: dict = {}
    original = model
    if not dynamic:
        for part in calib.per_input() if calib is not None else [calib]:  # several inputs: each array on its own
            check_finite(part, "calibration data", config.calib_batches * config.batch_size)
        if config.bias_correction and calib is not None and calib.multi_input:  # kit.compress.weight_correction feeds one input tensor
            details["weight_correction"] = "skipped: a model with several inputs"
        elif config.bias_correction and not config.per_channel:
            details["weight_correction"] = "skipped: per-tensor weights (a folded BatchNorm moves them off their grid)"
        elif config.bias_correction:
            from kit.compress.weight_correction import correct_weights

            model, details["weight_correction"] = correct_weights(model, calib, per_channel=config.per_channel,
                                                                  max_samples=config.correction_samples,
                                                                  rounding=config.rounding)
    graph, batch_dynamic = export_for_quant(model, example)
    float_graph = copy.deepcopy(graph)
    prepared = prepare(graph, xnnpack_quantizer(qconfig, config.skip_layers), name)
    if dynamic:
        with torch.no_grad():
            prepared(*example)  # weight observers only record when the graph runs once
        converted = convert(prepared, name, "dynamic int8")
    else:
        calibrate(prepared, calib, config.calib_batches * config.batch_size, config.batch_size if batch_dynamic else 1)
        if observer in ("auto", "percentile", "mse"):
            converted, details["activation_ranges"] = choose_ranges(prepared, config, original, calib, name, batch_dynamic,
                                                                    progress=progress)
        else:
            converted = convert(prepared, name, "static int8")
    return QuantizedModel(module=converted, example_input=example, config=config, float_graph=float_graph,
                          quantized_ops=count_quantize_ops(converted), batch_dynamic=batch_dynamic, details=details)


def _run(module, x: np.ndarray, batched: bool) -> np.ndarray:
    import torch

    step = 16 if batched else 1
    if isinstance(x, tuple):  # several inputs / outputs (kit.io)
        from kit.evaluate import outputs, torch_predictor

        return outputs(torch_predictor(module), Dataset(x, None), step)
    with torch.no_grad():
        return np.concatenate([module(torch.from_numpy(np.ascontiguousarray(x[i:i + step]))).detach().numpy()
                               for i in range(0, len(x), step)])


def choose_ranges(prepared, config: Int8Static, original: nn.Module, calib: Dataset, name: str, batch_dynamic: bool,
                  score_samples: int = 32, progress=None):
    """Convert with the activation ranges `config.observer` asks for; `auto` converts each of
    AUTO_CANDIDATES from the one calibration and keeps the best output SQNR against the original
    model on (up to) `score_samples` calibration inputs, never on the data the gate judges; with
    `range_search: per_tensor` each activation's percentile is then chosen on its own by the same
    score (kit.compress.range_search)."""
    from kit.compress.observers import set_mode
    from kit.evaluate import sqnr_db

    def finish(trial, mode, pct) -> tuple[nn.Module, dict]:
        set_mode(trial, mode, pct)
        converted = convert(trial, name, "static int8")
        return converted, {"observer": mode, "percentile": pct if mode == "percentile" else None}

    if config.observer != "auto":
        return finish(prepared, config.observer, config.percentile)
    x = calib.head(score_samples).x
    ref = _run(original.eval(), x, True)
    rows, best = [], None
    for mode, pct in AUTO_CANDIDATES:
        trial = copy.deepcopy(prepared)
        kept = copy.deepcopy(trial) if config.range_search == "per_tensor" else None  # convert works in place
        converted, row = finish(trial, mode, pct)
        row["calib_sqnr_db"] = round(float(sqnr_db(ref, _run(converted, x, batch_dynamic))), 2)
        rows.append(row)
        if best is None or row["calib_sqnr_db"] > best[0]:
            if kept is not None:
                set_mode(kept, mode, pct)
            best = (row["calib_sqnr_db"], converted, row, kept)
    info = {"chosen": best[2], "candidates": rows, "scored_on": f"{len(Dataset(x, None))} calibration inputs"}
    if config.range_search == "per_tensor":
        from kit.compress.range_search import refine_ranges

        trial = best[3]
        info["per_tensor"] = refine_ranges(trial, x, ref, lambda m, a: _run(m, a, batch_dynamic),
                                           max_seconds=config.range_search_seconds, progress=progress)
        if info["per_tensor"]["moved"]:
            return convert(trial, name, "static int8"), info
    return best[1], info
