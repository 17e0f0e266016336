"""Repair after a lossy step (structured or unstructured pruning, low-rank): distillation from the
ORIGINAL model on the user's own images, labels optional.

loss = alpha * T^2 * KL(student/T || teacher/T) [+ (1 - alpha) * CE(labels) when labelled]
       [+ hint_weight * MSE(adapter(student penultimate feature), teacher penultimate feature)]

The penultimate feature is the input of the last Linear layer (e.g. MobileNetV2's pooled last conv
block); a Linear adapter maps the student's channels to the teacher's when pruning changed them.
Images are augmented on the CPU (kit.compress.augment) and a held-out share of the TRAIN split
(never the test split) decides early stopping by top-1 agreement with the teacher; the best
weights are restored, and `max_seconds` caps the host time. Progress: one report per epoch.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from kit.errors import EdgeKitError
from kit.progress import ProgressFn, report

if TYPE_CHECKING:
    from torch import nn

    from kit.data import Dataset

REPAIRS = ("distill", "finetune", "none")
DEFAULT_EPOCHS = 3  # repair epochs when a step names none and training images are given


@dataclass
class RepairConfig:
    epochs: int = DEFAULT_EPOCHS
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    temperature: float = 2.0
    alpha: float = 0.9  # share of the soft-target term when labels are present too
    hint_weight: float = 0.5
    augment: str = "auto"
    max_seconds: float | None = 600.0
    holdout: float = 0.15  # share of the train split kept aside for early stopping
    patience: int = 3
    weight_decay: float = 1e-5


def check_repair(method: str, where: str, max_seconds) -> None:
    """Range checks shared by the configs that take a repair (one line naming the field)."""
    if method not in REPAIRS:
        raise EdgeKitError(f"{where} repair={method!r}: choose distill (default: from the original model), finetune (labels) or none")
    if max_seconds is not None and max_seconds <= 0:
        raise EdgeKitError(f"{where} max_seconds={max_seconds}: must be > 0 (or null for no cap)")


def resolve_epochs(epochs: int | None, method: str, data) -> int:
    """A step's repair epochs: as given, else DEFAULT_EPOCHS when it repairs and has images."""
    if epochs is not None:
        return epochs
    return DEFAULT_EPOCHS if method != "none" and data is not None and len(data) >= 2 else 0


def _penultimate(model: nn.Module):
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


class _Feature:
    def __init__(self, module):
        self.value = None
        self.handle = module.register_forward_pre_hook(self._hook) if module is not None else None

    def _hook(self, module, args):
        self.value = args[0]

    def close(self):
        if self.handle is not None:
            self.handle.remove()


def split_holdout(n: int, share: float, seed: int):
    """(train indices, held-out indices) of a train split of n samples; no hold-out below 24."""
    import numpy as np

    order = np.random.default_rng([seed, 7]).permutation(n)
    k = int(round(n * share)) if n >= 24 else 0
    k = max(k, 8) if k else 0
    return np.sort(order[k:]), np.sort(order[:k])


def top1_agreement(model: nn.Module, teacher_top1, x, batch: int = 64) -> float:
    import torch

    model.eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            hits += int((model(torch.from_numpy(x[i:i + batch])).argmax(1) == teacher_top1[i:i + batch]).sum())
    return hits / max(1, len(x))


def holdout_score(model: nn.Module, teacher_logits, x, batch: int = 64) -> tuple[float, float]:
    """(top-1 agreement, -KL to the teacher): the KL breaks ties of a small held-out set."""
    import torch
    import torch.nn.functional as F

    model.eval()
    with torch.no_grad():
        out = torch.cat([model(torch.from_numpy(x[i:i + batch])) for i in range(0, len(x), batch)])
    agree = float((out.argmax(1) == teacher_logits.argmax(1)).float().mean())
    kl = float(F.kl_div(F.log_softmax(out, 1), F.log_softmax(teacher_logits, 1), log_target=True, reduction="batchmean"))
    return round(agree, 4), round(-kl, 5)


def teacher_logits(teacher: nn.Module, x, batch: int = 64):
    import torch

    with torch.no_grad():
        return torch.cat([teacher(torch.from_numpy(x[i:i + batch])) for i in range(0, len(x), batch)])


def teacher_top1(teacher: nn.Module, x, batch: int = 64):
    import torch

    with torch.no_grad():
        return torch.cat([teacher(torch.from_numpy(x[i:i + batch])).argmax(1) for i in range(0, len(x), batch)])


def distill_repair(student: nn.Module, teacher: nn.Module, data: Dataset, cfg: RepairConfig, *,
                   label: str = "repair", progress: ProgressFn = None,
                   after_step: Callable[[nn.Module], None] | None = None) -> tuple[nn.Module, dict]:
    """Distil `teacher` into `student` (in place) on `data`; returns (student in eval mode, info)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from kit.compress.augment import augment, wanted

    if data is None or len(data) < 2:
        raise EdgeKitError(f"{label}: distillation needs training images (at least 2; --data)")
    t0 = time.time()
    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    train_idx, hold_idx = split_holdout(len(data), cfg.holdout, cfg.seed)
    hold_x = data.x[hold_idx]
    hold_ref = teacher_logits(teacher, hold_x) if len(hold_idx) else None
    aug = wanted(cfg.augment, data.x.shape)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    t_feat, s_feat = _Feature(_penultimate(teacher)), _Feature(_penultimate(student))
    adapter = None
    if cfg.hint_weight and t_feat.handle is not None and s_feat.handle is not None:
        with torch.no_grad():
            probe = torch.from_numpy(data.x[:2])
            teacher(probe)
            student.eval()(probe)
        if t_feat.value.dim() == 2 and s_feat.value.dim() == 2:
            adapter = torch.nn.Linear(s_feat.value.shape[1], t_feat.value.shape[1], bias=False)
            with torch.no_grad():  # identity where the channels line up (they do before any pruning)
                adapter.weight.zero_()
                k = min(adapter.weight.shape)
                adapter.weight[:k, :k] = torch.eye(k)
    params = [p for p in student.parameters() if p.requires_grad] + (list(adapter.parameters()) if adapter else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    batches = [train_idx[i:i + cfg.batch_size] for i in range(0, len(train_idx), cfg.batch_size)]
    batches = [b for b in batches if len(b) >= 2]
    steps = max(1, cfg.epochs * len(batches))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    T, labelled = cfg.temperature, data.y is not None
    before = holdout_score(student, hold_ref, hold_x) if hold_ref is not None else None
    best, best_epoch, stale, stopped, epochs_run = before, 0, 0, "epochs", 0
    # The un-repaired weights are the first candidate: a repair never returns a worse model.
    best_state = copy.deepcopy(student.state_dict()) if hold_ref is not None else None
    try:
        for epoch in range(cfg.epochs):
            student.train()
            order = rng.permutation(len(train_idx))
            for b in [train_idx[order[i:i + cfg.batch_size]] for i in range(0, len(order), cfg.batch_size)]:
                if len(b) < 2:
                    continue
                x = torch.from_numpy(data.x[b])
                if aug:
                    x = augment(x, gen)
                with torch.no_grad():
                    t_logits = teacher(x)
                s_logits = student(x)
                loss = F.kl_div(F.log_softmax(s_logits / T, 1), F.softmax(t_logits / T, 1), reduction="batchmean") * T * T
                if labelled:
                    y = torch.from_numpy(data.y[b])
                    ok = y >= 0
                    if bool(ok.any()):
                        loss = cfg.alpha * loss + (1 - cfg.alpha) * F.cross_entropy(s_logits[ok], y[ok])
                if adapter is not None:
                    tf = t_feat.value.detach()
                    loss = loss + cfg.hint_weight * F.mse_loss(adapter(s_feat.value), tf) / (tf.var() + 1e-6)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                if after_step is not None:
                    after_step(student)
                if cfg.max_seconds is not None and time.time() - t0 > cfg.max_seconds:
                    stopped = "max_seconds"
                    break
            epochs_run = epoch + 1
            report(progress, label, epoch + 1, cfg.epochs)
            if hold_ref is not None:
                score = holdout_score(student, hold_ref, hold_x)
                if score > best:
                    best, best_epoch, stale = score, epoch + 1, 0
                    best_state = copy.deepcopy(student.state_dict())
                else:
                    stale += 1
                if stale >= cfg.patience and stopped == "epochs":
                    stopped = "early"
            if stopped != "epochs":
                break
    finally:
        t_feat.close()
        s_feat.close()
    if hold_ref is not None and best_epoch == 0 and epochs_run:
        stopped += "; no epoch beat the un-repaired model: kept it"
    if best_state is not None:
        student.load_state_dict(best_state)
    student.eval()
    info = {"repair": "distill", "teacher": "original", "epochs_run": epochs_run, "best_epoch": best_epoch,
            "stopped": stopped, "augment": aug, "hint": adapter is not None, "seconds": round(time.time() - t0, 1),
            "train_images": int(len(train_idx)), "holdout_images": int(len(hold_idx))}
    if hold_ref is not None:
        info["holdout_agreement"] = [before[0], best[0]]
        info["holdout_kl"] = [-before[1], -best[1]]
    return student, info


def run_repair(model: nn.Module, teacher: nn.Module, data, method: str, cfg: RepairConfig, label: str,
               progress: ProgressFn = None, after_step=None) -> dict:
    """The one entry point the lossy steps call: distill (default), finetune (CE, labels) or none."""
    if method == "none" or cfg.epochs <= 0:
        return {"repair": "none"}
    if method == "finetune":
        import torch.nn.functional as F

        from kit.compress.distill import TrainConfig, train_loop

        if data is None or data.y is None:
            raise EdgeKitError(f"{label}: repair=finetune needs labelled training data (--data); "
                               "repair=distill works without labels")
        t0 = time.time()
        tc = TrainConfig(epochs=cfg.epochs, batch_size=max(2, cfg.batch_size), lr=cfg.lr, seed=cfg.seed)
        train_loop(model, data, tc, lambda m, x, y: F.cross_entropy(m(x), y), label, progress)
        return {"repair": "finetune", "epochs_run": cfg.epochs, "seconds": round(time.time() - t0, 1)}
    _, info = distill_repair(model, teacher, data, cfg, label=label, progress=progress, after_step=after_step)
    return info
