"""The arrays every stage sees: a Dataset (images and optional labels) and its train/calibration/
test Splits, with the preprocessing the loader applied. Loaders live in kit.data and kit.photos."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kit.io import head, is_multi, n_samples, sample_shapes, take
from kit.preprocess import Preprocess


@dataclass
class Dataset:
    # float32, N x C x H x W; or, for a model with several inputs, a tuple of arrays with the same N
    # (forward()'s argument order): batches then yield a tuple too (kit.io)
    x: np.ndarray | tuple
    y: np.ndarray | None  # int64 labels, or None for unlabelled data

    def __len__(self) -> int:
        return n_samples(self.x)

    @property
    def multi_input(self) -> bool:
        return is_multi(self.x)

    def head(self, n: int | None) -> "Dataset":
        """The first `n` samples (all when n is None)."""
        if n is None or len(self) <= n:
            return self
        return Dataset(head(self.x, n), None if self.y is None else self.y[:n])

    def per_input(self) -> list["Dataset"]:
        """One single-input Dataset per input (the data itself when it has one input): for checks
        that look at one array at a time."""
        return [Dataset(a, self.y) for a in self.x] if self.multi_input else [self]

    def batches(self, batch_size: int):
        for i in range(0, len(self), batch_size):
            yield take(self.x, i, i + batch_size), (None if self.y is None else self.y[i : i + batch_size])


def class_labels(y) -> bool:
    """True for one integer class per sample (top-1 applies); False for None, masks (N,H,W) or
    per-image detection targets (an object array / list of {"boxes", "labels"}: kit.tasks.data)."""
    return isinstance(y, np.ndarray) and y.ndim == 1 and np.issubdtype(y.dtype, np.integer)


@dataclass
class Splits:
    train: Dataset
    calib: Dataset
    test: Dataset
    num_classes: int
    name: str
    preprocess: Preprocess | None = None  # what the loader applied (None: not recorded / plain [0, 1])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one batch-of-one input, e.g. (1, 1, 32, 32) (several inputs: the first one's)."""
        return self.input_shapes[0]

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        """Batch-of-one shape of every input (one entry for a single-input model)."""
        return sample_shapes(self.train.x)
