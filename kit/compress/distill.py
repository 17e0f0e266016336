"""Training and knowledge distillation (Hinton et al.: soft targets at temperature T + hard labels)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kit.data import Dataset
from kit.errors import EdgeKitError
from kit.progress import ProgressFn, report


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0


@dataclass
class Distill:
    """Knowledge distillation config: loss = alpha * T^2 * KL(soft) + (1 - alpha) * CE(hard)."""

    temperature: float = 4.0
    alpha: float = 0.7
    train: TrainConfig = None  # type: ignore[assignment]

    def __post_init__(self):
        if self.train is None:
            self.train = TrainConfig()
        if not 0.0 <= self.alpha <= 1.0:
            raise EdgeKitError(f"distill alpha={self.alpha}: choose a value between 0 and 1")
        if self.temperature <= 0:
            raise EdgeKitError(f"distill temperature={self.temperature}: must be > 0")


def _loop(model: nn.Module, data: Dataset, cfg: TrainConfig, loss_fn, label: str, progress: ProgressFn) -> nn.Module:
    if data.y is None:
        raise EdgeKitError("training needs labelled data; the data set given has no labels (y)")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = (len(data) + cfg.batch_size - 1) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(1, cfg.epochs * steps_per_epoch))
    model.train()
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(data))
        for i in range(0, len(data), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on a batch of one
                continue
            x = torch.from_numpy(data.x[idx])
            y = torch.from_numpy(data.y[idx])
            opt.zero_grad()
            loss = loss_fn(model, x, y)
            loss.backward()
            opt.step()
            sched.step()
        report(progress, label, epoch + 1, cfg.epochs)
    return model.eval()


def train(model: nn.Module, data: Dataset, cfg: TrainConfig | None = None, progress: ProgressFn = None) -> nn.Module:
    """Plain supervised training with cross-entropy; returns the trained model (in eval mode)."""
    cfg = cfg or TrainConfig()
    return _loop(model, data, cfg, lambda m, x, y: F.cross_entropy(m(x), y), "train", progress)


def distill(teacher: nn.Module, student: nn.Module, data: Dataset, config: Distill | None = None,
            progress: ProgressFn = None) -> nn.Module:
    """Train `student` to match `teacher`'s softened outputs plus the hard labels."""
    config = config or Distill()
    teacher = copy.deepcopy(teacher).eval()
    T, a = config.temperature, config.alpha

    def loss_fn(m, x, y):
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = m(x)
        soft = F.kl_div(F.log_softmax(s_logits / T, 1), F.softmax(t_logits / T, 1), reduction="batchmean") * T * T
        return a * soft + (1 - a) * F.cross_entropy(s_logits, y)

    return _loop(student, data, config.train, loss_fn, "distill", progress)
