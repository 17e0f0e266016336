"""Segmentation models: a small encoder-decoder trained on kit.tasks.shapes masks (output
[N, C, H, W] class logits at the input size) and torchvision's LRASPP-MobileNetV3 (random weights)
wrapped to return its "out" tensor, so both have one output and go through compress/package/bench.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

OUTPUT_MEANING = "[N, C, H, W]: class logits per pixel at the input size (class 0 = background); argmax -> mask"


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinySeg(nn.Module):
    """Stride-4 encoder with a skip at stride 2, bilinear upsampling back to the input size."""

    def __init__(self, num_classes: int = 3, width: int = 16):
        super().__init__()
        self.enc1 = nn.Sequential(_conv(3, width, 2), _conv(width, width))  # /2
        self.enc2 = nn.Sequential(_conv(width, width * 2, 2), _conv(width * 2, width * 2), _conv(width * 2, width * 2))  # /4
        self.fuse = _conv(width * 3, width)
        self.cls = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f2 = self.enc1(x)
        f4 = self.enc2(f2)
        up = nn.functional.interpolate(f4, scale_factor=2.0, mode="bilinear", align_corners=False)
        y = self.cls(self.fuse(torch.cat([f2, up], 1)))
        return nn.functional.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)


def train_segmenter(images: np.ndarray, masks: np.ndarray, num_classes: int = 3, steps: int = 200, batch: int = 16,
                    lr: float = 5e-3, seed: int = 0, width: int = 16) -> TinySeg:
    """Train a TinySeg with cross-entropy for `steps` Adam steps; returns it in eval mode."""
    torch.manual_seed(seed)
    model = TinySeg(num_classes, width)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(masks)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (batch,), generator=gen)
        loss = nn.functional.cross_entropy(model(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


class LrasppOut(nn.Module):
    """torchvision lraspp_mobilenet_v3_large (random weights) returning only its "out" tensor."""

    def __init__(self, num_classes: int = 21):
        super().__init__()
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        self.net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)["out"]


def lraspp(num_classes: int = 21) -> LrasppOut:
    return LrasppOut(num_classes).eval()
