"""Evaluation: accuracy on labelled data, agreement with the original model's outputs (which
works on unlabelled data too), and size figures. Every predictor is a numpy -> numpy callable,
so a torch module, a .pte and an .onnx are judged by the same code."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from kit.data import Dataset
from kit.errors import EdgeKitError

Predictor = Callable[[np.ndarray], np.ndarray]


def torch_predictor(module: torch.nn.Module) -> Predictor:
    module = module.eval() if hasattr(module, "eval") else module

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    return run


def outputs(predict: Predictor, data: Dataset, batch_size: int = 1) -> np.ndarray:
    """Run `predict` over `data` (batch 1 by default: exported artifacts have a fixed batch of one)."""
    if len(data) == 0:
        raise EdgeKitError("evaluation set is empty; give data with at least one sample")
    return np.concatenate([np.asarray(predict(xb)) for xb, _ in data.batches(batch_size)])


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, 1) == labels))


def sqnr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of `other` against `reference`, in dB."""
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

    def to_dict(self):
        return asdict(self)


def agreement(reference: np.ndarray, other: np.ndarray) -> Agreement:
    return Agreement(
        top1_match=float(np.mean(np.argmax(reference, 1) == np.argmax(other, 1))),
        sqnr_db=sqnr_db(reference, other),
        max_abs_err=float(np.max(np.abs(reference - other))),
    )


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
        module.eval()(torch.zeros(input_shape))
    return int(counter.get_total_flops() // 2)
