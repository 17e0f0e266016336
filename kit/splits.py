"""The arrays every stage sees: a Dataset (images and optional labels) and its train/calibration/
test Splits, with the preprocessing the loader applied. Loaders live in kit.data and kit.photos."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kit.preprocess import Preprocess


@dataclass
class Dataset:
    x: np.ndarray  # float32, N x C x H x W
    y: np.ndarray | None  # int64 labels, or None for unlabelled data

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int):
        for i in range(0, len(self.x), batch_size):
            yield self.x[i : i + batch_size], (None if self.y is None else self.y[i : i + batch_size])


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
        """Shape of one batch-of-one input, e.g. (1, 1, 32, 32)."""
        return (1, *self.train.x.shape[1:])
