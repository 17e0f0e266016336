"""Training and knowledge distillation (Hinton et al.: soft targets at temperature T + hard labels),
with optional feature (hint) distillation through a small adapter (Romero et al., FitNets)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal

from kit.compress.base import Pass, StepContext, StepResult
from kit.data import Dataset
from kit.errors import EdgeKitError
from kit.progress import ProgressFn, report

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class TrainConfig:
    __pydantic_config__ = Pass.__pydantic_config__
    epochs: int = 5
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    max_samples: int | None = None  # train on the first N samples only (few-label settings)

    def __post_init__(self):
        if self.epochs < 0 or self.batch_size < 2 or self.lr <= 0:
            raise EdgeKitError(f"training epochs={self.epochs} batch_size={self.batch_size} lr={self.lr}: "
                               "need epochs >= 0, batch_size >= 2, lr > 0")


def as_train_config(value) -> TrainConfig:
    if value is None:
        return TrainConfig()
    if isinstance(value, TrainConfig):
        return value
    if isinstance(value, dict):
        try:
            return TrainConfig(**value)
        except TypeError as e:
            raise EdgeKitError(f"train: {e}; fields are epochs, batch_size, lr, weight_decay, seed, max_samples") from e
    raise EdgeKitError(f"train={value!r}: give a mapping of epochs, batch_size, lr, ...")


@dataclass
class Distill(Pass):
    """Knowledge distillation config: loss = alpha * T^2 * KL(soft) + (1 - alpha) * CE(hard)
    [+ hint_weight * MSE(adapter(student feature), teacher feature)].

    `student` builds a new student (kit.models spec, or a MobileNet arch name with width_mult /
    depth_mult / stem_stride); without it the current model is the student. `baseline` also trains
    the same student without the teacher, so the report shows what distillation bought.
    """

    temperature: float = 4.0
    alpha: float = 0.7
    train: TrainConfig = None  # type: ignore[assignment]
    student: str | None = None  # e.g. "mobilenet_v2", "mobilenet_v3_small", "torchvision:resnet18", "pkg.mod:fn"
    width_mult: float = 0.5
    depth_mult: float = 1.0
    stem_stride: int | None = None
    hint_teacher_layer: str | None = None  # module name whose output the student should match
    hint_student_layer: str | None = None
    hint_weight: float = 1.0
    baseline: bool = True
    # Extra training images used without their labels (teacher soft targets only), beyond the first
    # `max_samples` labelled ones: distillation's edge when labels are scarce but images are not.
    transfer_samples: int = 0
    # Flat shortcuts for recipes (override the matching `train` fields when given).
    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    max_samples: int | None = None
    seed: int | None = None
    method: Literal["distill"] = "distill"

    def __post_init__(self):
        self.train = as_train_config(self.train)
        flat = {k: getattr(self, k) for k in ("epochs", "lr", "batch_size", "max_samples", "seed") if getattr(self, k) is not None}
        if flat:
            self.train = dataclasses.replace(self.train, **flat)
        if not 0.0 <= self.alpha <= 1.0:
            raise EdgeKitError(f"distill alpha={self.alpha}: choose a value between 0 and 1")
        if self.temperature <= 0:
            raise EdgeKitError(f"distill temperature={self.temperature}: must be > 0")
        if self.transfer_samples < 0:
            raise EdgeKitError(f"distill transfer_samples={self.transfer_samples}: must be >= 0")
        if self.transfer_samples and self.train.max_samples is None:
            raise EdgeKitError("distill transfer_samples needs max_samples (how many samples keep their labels)")
        if (self.hint_teacher_layer is None) != (self.hint_student_layer is None):
            raise EdgeKitError("distill hint: give both hint_teacher_layer and hint_student_layer, or neither")

    def apply(self, model, ctx: StepContext) -> StepResult:
        student = build_student(self, ctx.splits) if self.student else model
        teacher = ctx.teacher if ctx.teacher is not None else ctx.original
        return StepResult(*_with_baseline(self, teacher, student, ctx.splits, ctx.eval_data, ctx.progress))


def train_loop(model: nn.Module, data: Dataset, cfg: TrainConfig, loss_fn, label: str, progress: ProgressFn,
               extra_params=(), set_train: Callable | None = None, set_eval: Callable | None = None,
               on_step: Callable[[int, int], None] | None = None) -> nn.Module:
    """AdamW + one-cycle over `data`; hooks let QAT graphs and gradual pruning reuse the same loop."""
    import numpy as np
    import torch

    if data.y is None:
        raise EdgeKitError("training needs labelled data; the data set given has no labels (y)")
    n = len(data) if cfg.max_samples is None else min(len(data), cfg.max_samples)
    if n < 2:
        raise EdgeKitError(f"training set has {n} sample(s); give at least 2 labelled samples")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = sum(1 for i in range(0, n, cfg.batch_size) if min(cfg.batch_size, n - i) >= 2)
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    (set_train or (lambda m: m.train()))(model)
    step = 0
    for epoch in range(cfg.epochs):
        order = rng.permutation(n)
        for i in range(0, n, cfg.batch_size):
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
            step += 1
            if on_step is not None:
                on_step(step, total)
        report(progress, label, epoch + 1, cfg.epochs)
    (set_eval or (lambda m: m.eval()))(model)
    return model


# Kept for callers of the original private name.
_loop = train_loop


def build_student(config: Distill, splits) -> nn.Module:
    """The new student a distill step names (a MobileNet arch, torchvision:NAME or a model spec)."""
    from kit.models import _replace_first_conv, load_model, mobilenet_student

    channels = splits.train.x.shape[1]
    if config.student in ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"):
        return mobilenet_student(config.student, config.width_mult, splits.num_classes, in_channels=channels,
                                 stem_stride=config.stem_stride, depth_mult=config.depth_mult)
    if config.student.startswith("torchvision:"):
        model = load_model(config.student, num_classes=splits.num_classes)
        if channels != 3 or config.stem_stride:
            _replace_first_conv(model, channels, config.stem_stride)
        return model
    return load_model(config.student)


def _with_baseline(config: Distill, teacher: nn.Module, student: nn.Module, splits, eval_data: Dataset,
                   progress: ProgressFn) -> tuple[nn.Module, dict]:
    from kit.evaluate import outputs, top1, torch_predictor

    untrained = copy.deepcopy(student)
    trained = distill(teacher, student, splits.train, config, progress)
    info = {"student_params": sum(p.numel() for p in trained.parameters())}
    if config.baseline and eval_data.y is not None:
        # Same student, same data, same epochs and seed, labels only: what the teacher added.
        cfg = config.train
        if config.transfer_samples:
            # Labels only exist for max_samples images: give the baseline as many optimiser steps.
            n_lab = min(len(splits.train), cfg.max_samples)
            n_all = min(len(splits.train), n_lab + config.transfer_samples)
            steps = lambda n: sum(1 for i in range(0, n, cfg.batch_size) if min(cfg.batch_size, n - i) >= 2)  # noqa: E731
            cfg = dataclasses.replace(cfg, epochs=max(1, round(cfg.epochs * steps(n_all) / steps(n_lab))))
            info["baseline_epochs"] = cfg.epochs
        alone = train(untrained, splits.train, cfg, progress)
        score = lambda m: round(top1(outputs(torch_predictor(m), eval_data, 64), eval_data.y), 4)  # noqa: E731
        info["top1_with_teacher"] = score(trained)
        info["top1_without_teacher"] = score(alone)
        info["top1_teacher"] = score(teacher)
    return trained, info


def train(model: nn.Module, data: Dataset, cfg: TrainConfig | None = None, progress: ProgressFn = None) -> nn.Module:
    """Plain supervised training with cross-entropy; returns the trained model (in eval mode)."""
    import torch.nn.functional as F

    cfg = cfg or TrainConfig()
    return train_loop(model, data, cfg, lambda m, x, y: F.cross_entropy(m(x), y), "train", progress)


class _Capture:
    """Forward hook that keeps a module's latest output (the hint feature)."""

    def __init__(self, model: nn.Module, layer: str, role: str):
        try:
            module = model.get_submodule(layer)
        except AttributeError as e:
            names = ", ".join(n for n, _ in list(model.named_modules())[1:6])
            raise EdgeKitError(f"distill hint_{role}_layer={layer!r}: no such module in {type(model).__name__} (e.g. {names})") from e
        self.value = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.value = output

    def close(self):
        self.handle.remove()


def _adapter(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> nn.Module:
    # A 1x1 conv (or linear) maps student channels to teacher channels; pooling fixes spatial size.
    from torch import nn

    if student_feat.dim() == 4 and teacher_feat.dim() == 4:
        size = teacher_feat.shape[-2:]
        return nn.Sequential(nn.Conv2d(student_feat.shape[1], teacher_feat.shape[1], 1, bias=False),
                             nn.AdaptiveAvgPool2d(tuple(size)))
    if student_feat.dim() == 2 and teacher_feat.dim() == 2:
        return nn.Linear(student_feat.shape[1], teacher_feat.shape[1], bias=False)
    raise EdgeKitError(f"distill hint layers give features of shapes {tuple(student_feat.shape)} and "
                       f"{tuple(teacher_feat.shape)}; pick two conv outputs or two flat (N x C) outputs")


def distill(teacher: nn.Module, student: nn.Module, data: Dataset, config: Distill | None = None,
            progress: ProgressFn = None) -> nn.Module:
    """Train `student` to match `teacher`'s softened outputs plus the hard labels (and hints)."""
    import torch
    import torch.nn.functional as F

    config = config or Distill()
    teacher = copy.deepcopy(teacher).eval()
    T, a = config.temperature, config.alpha
    hooks: list[_Capture] = []
    adapter = None
    if config.hint_teacher_layer:
        t_cap = _Capture(teacher, config.hint_teacher_layer, "teacher")
        s_cap = _Capture(student, config.hint_student_layer, "student")
        hooks = [t_cap, s_cap]
        probe = torch.from_numpy(data.x[:2])
        with torch.no_grad():
            teacher(probe)
            was_training = student.training
            student.eval()(probe)
            student.train(was_training)
        adapter = _adapter(s_cap.value, t_cap.value)

    def loss_fn(m, x, y):
        with torch.no_grad():
            t_logits = teacher(x)
        s_logits = m(x)
        soft = F.kl_div(F.log_softmax(s_logits / T, 1), F.softmax(t_logits / T, 1), reduction="batchmean") * T * T
        labelled = y >= 0  # transfer samples carry label -1: soft targets only
        hard = F.cross_entropy(s_logits[labelled], y[labelled]) if bool(labelled.any()) else s_logits.sum() * 0.0
        loss = a * soft + (1 - a) * hard
        if adapter is not None:
            loss = loss + config.hint_weight * F.mse_loss(adapter(hooks[1].value), hooks[0].value.detach())
        return loss

    cfg = config.train
    if config.transfer_samples:
        n_lab = min(len(data), cfg.max_samples)
        n_all = min(len(data), n_lab + config.transfer_samples)
        y = data.y[:n_all].copy()
        y[n_lab:] = -1
        data = Dataset(data.x[:n_all], y)
        cfg = dataclasses.replace(cfg, max_samples=n_all)
    try:
        return train_loop(student, data, cfg, loss_fn, "distill", progress,
                          extra_params=list(adapter.parameters()) if adapter is not None else ())
    finally:
        for h in hooks:
            h.close()

