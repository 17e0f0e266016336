"""Input-aware rounding of Conv/Linear weights onto the int8 grid (GPTQ, Frantar et al. 2022; the
Optimal Brain Quantization update of Frantar & Alistarh): each output channel's weights are
rounded one input column at a time, and each column's rounding error is pushed onto the columns
not yet rounded, weighted by the inverse Hessian H = sum x x^T of the layer's inputs on
calibration data. It minimises the layer's output error ||W x - Q x||^2, which nearest rounding
ignores. The result sits exactly on the grid kit.compress.weight_correction uses (symmetric,
per output channel, scale = max|w| / 127, the largest weight kept at +-127), so both runtimes'
quantizers re-quantize it without error.

Why by hand: the libraries that do input-aware rounding work on their own graphs and for other
layers (AIMET's AdaRound needs AIMET's torch build, NNCF's GPTQ compresses Linear weights of LLMs
to 4 bits); the update itself is a few lines of linear algebra per layer (one Cholesky).
Depthwise convolutions get one 9x9 (k x k) Hessian per channel; other grouped convolutions and
layers whose input cannot be unfolded keep nearest rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

QMAX = 127  # symmetric int8 weights: [-127, 127] in torchao's XNNPACK config and ORT's QDQ
DAMP = 0.01  # share of the mean Hessian diagonal added to it: keeps the inverse stable on few samples


def check_rounding(method: str, rounding: str) -> None:
    from kit.errors import EdgeKitError

    if rounding not in ("gptq", "nearest"):
        raise EdgeKitError(f"{method} rounding={rounding!r}: choose gptq (input-aware) or nearest")


def _scale(w: "torch.Tensor", qmax: int = QMAX) -> "torch.Tensor":
    return w.reshape(w.shape[0], -1).abs().amax(1).clamp(min=1e-12) / qmax


def round_to_grid(weight: "torch.Tensor", per_channel: bool = True, qmax: int = QMAX) -> "torch.Tensor":
    """`weight` on the symmetric grid [-qmax, qmax] (per output channel, or per tensor), nearest rounding."""
    import torch

    w = weight.detach()
    scale = (_scale(w, qmax) if per_channel else w.abs().amax().clamp(min=1e-12).reshape(1) / qmax).view(-1, *[1] * (w.dim() - 1))
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


def _columns(m: "nn.Module", x: "torch.Tensor") -> "torch.Tensor | None":
    """The layer's input as (rows, columns) in the order of weight.reshape(out, -1), or for a
    depthwise conv (channels, k*k, rows); None where the layer is not handled."""
    import torch.nn.functional as F
    from torch import nn

    if isinstance(m, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if not isinstance(m, nn.Conv2d) or m.padding_mode != "zeros" or isinstance(m.padding, str):
        return None
    pad = getattr(m, "static_padding", None)  # EfficientNet-Lite's Conv2dStaticSamePadding pads in forward
    if pad is not None:
        x = pad(x)
    cols = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)  # N, C*k*k, L
    if m.groups == 1:
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    if m.groups == m.in_channels == m.out_channels:
        k = m.kernel_size[0] * m.kernel_size[1]
        return cols.reshape(cols.shape[0], m.in_channels, k, -1).permute(1, 2, 0, 3).reshape(m.in_channels, k, -1)
    return None


def hessians(model: "nn.Module", layers, x: "torch.Tensor", batch_size: int = 8) -> dict:
    """sum x x^T of each layer's inputs over `x` (float64): (D, D), or (C, k*k, k*k) for depthwise."""
    from kit.compress.hooks import forward_batches

    acc, hooks = {}, []
    for name, m in layers:
        def hook(mod, inputs, name=name):
            cols = _columns(mod, inputs[0].detach().double())
            if cols is None:
                acc[name] = None
                return
            h = cols.transpose(0, 1) @ cols if cols.dim() == 2 else cols @ cols.transpose(1, 2)
            if acc.get(name, 0) is not None:
                acc[name] = acc.get(name, 0) + h
        hooks.append(m.register_forward_pre_hook(hook))
    forward_batches(model, x, hooks, batch_size)
    return acc


def _inverse_factor(h: "torch.Tensor") -> "torch.Tensor":
    """Upper Cholesky factor of H^-1 (batched), H damped; dead inputs (zero diagonal) get 1."""
    import torch

    h = h.clone()
    diag = torch.diagonal(h, dim1=-2, dim2=-1)
    diag[diag == 0] = 1.0
    diag += DAMP * diag.mean(-1, keepdim=True)
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def gptq_round(weight: "torch.Tensor", h: "torch.Tensor", qmax: int = QMAX) -> "torch.Tensor":
    """`weight` (out, ...) rounded onto its per-channel int8 grid with GPTQ's error feedback.
    `h`: (D, D) shared by all output channels, or (out, D, D) one per channel (depthwise)."""
    import torch

    shape = weight.shape
    w = weight.detach().double().reshape(shape[0], -1).clone()
    # the scale exactly as round_to_grid computes it (float32): the quantizers find the same grid
    scale32 = _scale(weight.detach(), qmax)
    scale = scale32.double()
    top = w.abs().argmax(1)  # the largest weight of each channel stays at +-127: the grid stays the same
    sign = torch.sign(w[torch.arange(w.shape[0]), top])
    u = _inverse_factor(h)
    q = torch.empty_like(w)  # integers in [-127, 127]
    rows = torch.arange(w.shape[0])
    for j in range(w.shape[1]):
        col = w[:, j]
        qj = torch.clamp(torch.round(col / scale), -qmax, qmax)
        fixed = top == j
        qj[fixed] = sign[fixed] * qmax
        q[:, j] = qj
        d = u[j, j] if u.dim() == 2 else u[rows, j, j]
        err = (col - qj * scale) / d
        if j + 1 < w.shape[1]:
            tail = u[j, j + 1:][None, :] if u.dim() == 2 else u[rows, j, j + 1:]
            w[:, j + 1:] -= err[:, None] * tail
    return (q.to(weight.dtype) * scale32[:, None]).reshape(shape)


def round_layers(model: "nn.Module", layers, x: "torch.Tensor", qmax: int = QMAX) -> dict:
    """Replace each layer's weight by its GPTQ rounding (in place) from the float model's inputs
    on `x`; layers the method does not handle get nearest rounding. Returns what was done."""
    hs = hessians(model, layers, x)
    done, nearest = 0, []
    for name, m in layers:
        h = hs.get(name)
        if h is None or (h.dim() == 3 and h.shape[0] != m.weight.shape[0]):
            m.weight.data = round_to_grid(m.weight.data, True, qmax)
            nearest.append(name)
            continue
        m.weight.data = gptq_round(m.weight.data, h, qmax)
        done += 1
    return {"rounding": "gptq", "gptq_layers": done, "nearest_layers": nearest[:10], "rounding_samples": int(len(x))}


def output_error(w: "torch.Tensor", q: "torch.Tensor", h: "torch.Tensor") -> float:
    """sum over channels of (w - q) H (w - q)^T: the layer's squared output error on the Hessian's inputs."""
    d = (w.double() - q.double()).reshape(w.shape[0], -1)
    if h.dim() == 2:
        return float(np.einsum("od,de,oe->", d.numpy(), h.numpy(), d.numpy()))
    return float(np.einsum("od,ode,oe->", d.numpy(), h.numpy(), d.numpy()))
