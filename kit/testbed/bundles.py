"""Signed ONNX bundles of a small real model, any size, for fleet tests and benchmarks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch


class _Wide(torch.nn.Module):
    """A real model whose weights make the bundle `hidden * 1 KiB` big (push-time faults, benchmarks)."""

    def __init__(self, hidden: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc1 = torch.nn.Linear(256, hidden)
        self.fc2 = torch.nn.Linear(hidden, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def make_bundle(out: Path, name: str, hidden: int = 32, seed: int = 0, break_reference: bool = False):
    """A signed ONNX bundle of a small real model; `break_reference` makes its reference check fail."""
    from kit.package import package
    from kit.package.bundle import Bundle, write_bundle

    x = np.random.default_rng(seed).standard_normal((1, 1, 16, 16)).astype(np.float32)
    b = package(_Wide(hidden, seed).eval(), "onnx", out, x, name=name)
    if not break_reference:
        return b
    ref_out = np.load(b.path / "reference_output.npy") + 100.0  # far outside atol: the gate must fail
    model = out.parent / f"{out.name}-model.onnx"
    shutil.copyfile(b.model_file, model)
    shutil.rmtree(out)
    return Bundle.load(write_bundle(out, model, name, x, ref_out).path)
