"""Batched image augmentation on the CPU in torch, so a few hundred of the user's own images go a
long way when a compressed model is repaired by distillation: per-sample random resized crops
(torchvision.ops.roi_align, one call for the whole batch), horizontal flips and colour jitter
(brightness, contrast, saturation) applied in the model's normalised input space.

`auto` turns it on for natural images only (3 channels, >= 64 pixels a side): digits or tiny
inputs are hurt by flips and crops."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kit.errors import EdgeKitError

if TYPE_CHECKING:
    import torch

MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class Augment:
    scale: tuple[float, float] = (0.35, 1.0)  # crop area share of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio
    flip: float = 0.5
    brightness: float = 0.3  # additive shift, in units of the normalised range
    contrast: float = 0.3  # multiplicative around each image's mean
    saturation: float = 0.3  # blend with the per-pixel channel mean (3-channel inputs)


def wanted(mode: str, shape) -> bool:
    """Whether augmentation runs for inputs of `shape` (C, H, W or N, C, H, W) under `mode`."""
    if mode not in MODES:
        raise EdgeKitError(f"augment={mode!r}: choose auto, on or off")
    if mode != "auto":
        return mode == "on"
    c, h, w = tuple(shape)[-3:]
    return c == 3 and min(h, w) >= 64


def augment(x: torch.Tensor, gen: torch.Generator, cfg: Augment = Augment()) -> torch.Tensor:
    """N x C x H x W -> an augmented batch of the same shape (a new tensor)."""
    import math

    import torch
    from torchvision.ops import roi_align

    n, c, h, w = x.shape
    u = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    area = (cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * u(n)) * h * w
    logr = math.log(cfg.ratio[0]) + (math.log(cfg.ratio[1]) - math.log(cfg.ratio[0])) * u(n)
    aspect = torch.exp(logr)
    cw = torch.sqrt(area * aspect).clamp(4, w)
    ch = torch.sqrt(area / aspect).clamp(4, h)
    x0 = u(n) * (w - cw)
    y0 = u(n) * (h - ch)
    boxes = torch.stack([torch.arange(n, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], 1)
    out = roi_align(x, boxes, output_size=(h, w), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = u(n) < cfg.flip
    out[flip] = out[flip].flip(-1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1 + cfg.contrast * (2 * u(n, 1, 1, 1) - 1)
    out = (out - mean) * contrast + mean + cfg.brightness * (2 * u(n, 1, 1, 1) - 1)
    if c == 3 and cfg.saturation:
        grey = out.mean(1, keepdim=True)
        sat = 1 + cfg.saturation * (2 * u(n, 1, 1, 1) - 1)
        out = (out - grey) * sat + grey
    return out.contiguous()
