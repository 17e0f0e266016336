"""Weight rounding and empirical bias correction before int8, done once in torch for both runtimes.

Why by hand: NNCF's fast bias correction runs on NNCF's own graph and, tried here through
`nncf.experimental.torch.fx.quantize_pt2e` with the XNNPACK quantizer on the real MobileNetV2,
lowered agreement (0.58 against 0.67 for plain MinMax); AIMET's needs its own torch build. The
method itself is small (Nagel et al., "Data-Free Quantization", empirical variant):

1. every Conv/Linear weight is rounded to the grid the quantizer will use (symmetric, per output
   channel, [-127, 127]; scale = max|w| / 127, which PT2E's XNNPACK config and ORT's QDQ
   quantizer both compute). The largest weight of each channel stays where it is, so the
   quantizer finds the same scale and re-quantizes these weights without error; folding a
   following BatchNorm scales a whole channel and keeps it on its grid.
2. rounding shifts each layer's mean output; that shift, measured on calibration inputs layer by
   layer in execution order (each layer sees its corrected predecessors), is taken out of the
   layer's bias. On the real MobileNetV2 (224 px, 64 crops) weights alone go from 19.3 dB to
   27.4 dB output SQNR, EfficientNet-Lite1 from 16.5 dB to 22.2 dB. `rounding="gptq"` replaces
   step 1 by input-aware rounding (kit.compress.gptq_rounding): MobileNetV2's weights alone then
   reach 32.7 dB.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np

from kit.compress.gptq_rounding import round_to_grid
from kit.data import Dataset
from kit.errors import EdgeKitError

if TYPE_CHECKING:
    import torch
    from torch import nn


def correctable_layers(model: "nn.Module") -> list[tuple[str, "nn.Module"]]:
    from torch import nn

    # Subclasses count (EfficientNet-Lite's Conv2dStaticSamePadding pads, then runs Conv2d's weight);
    # ConvTranspose (not a subclass) keeps its output channels on axis 1: its grid is not the one above.
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]


def _channel_mean(out: "torch.Tensor") -> "torch.Tensor":
    return out.transpose(0, 1).reshape(out.shape[1], -1).mean(1) if out.dim() > 2 else out.mean(0)


def _float_means(model, x, layers, batch_size: int) -> dict:
    """Per-channel mean output of each layer of the float model over `x`."""
    from kit.compress.hooks import forward_batches

    sums, hooks = {}, []
    for name, m in layers:
        def hook(_m, _i, out, name=name):
            sums[name] = sums.get(name, 0) + _channel_mean(out.detach()) * out.shape[0]
        hooks.append(m.register_forward_hook(hook))
    forward_batches(model, x, hooks, batch_size)
    return {k: v / len(x) for k, v in sums.items()}


def correct_weights(model: "nn.Module", calib: Dataset | None, *, per_channel: bool = True, max_samples: int = 64,
                    bias: bool = True, batch_size: int = 16, rounding: str = "nearest",
                    qmax: int = 127) -> tuple["nn.Module", dict]:
    """A copy of `model` whose Conv/Linear weights sit on the int8 grid and whose biases absorb the
    mean shift that rounding causes. Returns (model, info). The correction runs all `max_samples`
    inputs through the network in one batch, so that each layer is corrected before the next one
    sees its output (a few hundred MB at 224 px for 64 samples). `rounding`: nearest, or gptq
    (kit.compress.gptq_rounding: input-aware, from the float model's inputs on the same samples).
    `qmax` 64: ORT's reduce_range grid (7-bit weights, for x86-64 CPUs without VNNI)."""
    import torch
    from torch import nn

    if not per_channel:
        raise EdgeKitError("bias_correction needs per_channel: true (a folded BatchNorm moves per-tensor weights off their grid)")
    model = model.eval()
    work = copy.deepcopy(model).eval()
    layers = correctable_layers(work)
    if not layers:
        return work, {"bias_correction": "no Conv/Linear layer"}
    if (bias or rounding == "gptq") and (calib is None or len(calib) == 0):
        raise EdgeKitError("bias_correction needs calibration samples (--data)")
    x = None if calib is None else torch.from_numpy(np.ascontiguousarray(calib.x[:max_samples], dtype=np.float32))
    info: dict = {"weights_on_grid": len(layers), **({"weight_range": [-qmax, qmax]} if qmax != 127 else {})}
    if rounding == "gptq":
        from kit.compress.gptq_rounding import round_layers

        info.update(round_layers(work, layers, x, qmax))
    else:
        info["rounding"] = "nearest"
        for _, m in layers:
            m.weight.data = round_to_grid(m.weight.data, per_channel, qmax)
    if not bias:
        return work, info
    ref = _float_means(model, x, correctable_layers(model), batch_size)
    shifts, hooks = {}, []
    for name, m in layers:
        def hook(mod, _i, out, name=name):
            if out.dim() < 2 or out.shape[1] != ref[name].numel():  # a reshape inside: leave this layer
                return None
            delta = _channel_mean(out.detach()) - ref[name]
            if mod.bias is None:
                mod.bias = nn.Parameter(torch.zeros(out.shape[1], dtype=out.dtype))
            mod.bias.data -= delta
            shifts[name] = float(delta.abs().mean())
            return out - delta.view(1, -1, *[1] * (out.dim() - 2))
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            work(x)
    finally:
        for h in hooks:
            h.remove()
    worst = sorted(shifts.items(), key=lambda kv: -kv[1])[:5]
    info.update({"bias_corrected": len(shifts), "correction_samples": len(x),
                 "largest_shifts": [{"layer": k, "mean_abs_shift": round(v, 5)} for k, v in worst]})
    return work, info
