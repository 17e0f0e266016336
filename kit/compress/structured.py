"""Structured channel pruning with torch-pruning's DepGraph (Fang et al., CVPR 2023): channels are
physically removed, and coupled layers (residual adds, depthwise convs, BatchNorm, the next conv's
input) are pruned together so MobileNet/ResNet graphs stay consistent. Importance is the L1 or L2
norm of each channel group (Li et al., "Pruning Filters for Efficient ConvNets")."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from kit.compress.base import Pass, StepContext, StepResult
from kit.compress.distill import TrainConfig, train_loop
from kit.errors import EdgeKitError
from kit.progress import ProgressFn, report

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kit.data import Dataset


@dataclass
class PruneStructured(Pass):
    ratio: float = 0.5  # fraction of channels removed from each prunable group
    norm: str = "l1"  # l1 | l2
    global_pruning: bool = False
    iterative_steps: int = 1
    round_to: int | None = None  # keep channel counts multiples of this (SIMD-friendly, e.g. 8)
    epochs: int = 0  # fine-tune epochs after pruning (split across iterative steps)
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    ignore: list[str] = field(default_factory=list)  # module names whose output channels stay
    method: Literal["prune_structured"] = "prune_structured"

    def __post_init__(self):
        if not 0.0 < self.ratio < 1.0:
            raise EdgeKitError(f"prune_structured ratio={self.ratio}: must be in (0, 1), e.g. 0.3 to remove 30% of channels")
        if self.norm not in ("l1", "l2"):
            raise EdgeKitError(f"prune_structured norm={self.norm!r}: choose l1 or l2")
        if self.iterative_steps < 1:
            raise EdgeKitError(f"prune_structured iterative_steps={self.iterative_steps}: must be >= 1")

    def apply(self, model, ctx: StepContext) -> StepResult:
        return StepResult(*prune_structured(model, self, ctx.example, ctx.splits.train, ctx.progress))


def conv_channels(model: nn.Module) -> dict[str, int]:
    from torch import nn

    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _classifier(model: nn.Module, num_classes: int | None) -> list[nn.Module]:
    # The output layer's channels are the classes: never prune them.
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if linears:
        return [linears[-1]]
    return [convs[-1]] if convs else []


def prune_structured(model: nn.Module, config: PruneStructured, example: torch.Tensor, data: Dataset | None = None,
                     progress: ProgressFn = None):
    """Return (pruned copy of `model`, info dict: channels before/after, params, MACs)."""
    import torch.nn.functional as F
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    known = dict(model.named_modules())
    for name in config.ignore:
        if name not in known:
            raise EdgeKitError(f"prune_structured ignore: no module named {name!r} in {type(model).__name__}")
    if config.epochs > 0 and (data is None or data.y is None):
        raise EdgeKitError("prune_structured epochs > 0 needs labelled training data for the fine-tune (--data)")
    ignored = _classifier(model, None) + [known[n] for n in config.ignore]
    before = conv_channels(model)
    macs0, params0 = tp.utils.count_ops_and_params(model, example)
    importance = tp.importance.MagnitudeImportance(p=1 if config.norm == "l1" else 2)
    try:
        pruner = tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=config.ratio,
                                      global_pruning=config.global_pruning, iterative_steps=config.iterative_steps,
                                      ignored_layers=ignored, round_to=config.round_to)
    except Exception as e:
        raise EdgeKitError(f"prune_structured: torch-pruning cannot trace {type(model).__name__} "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); list unsupported modules in ignore") from e
    per_step = max(1, config.epochs // config.iterative_steps) if config.epochs else 0
    for step in range(config.iterative_steps):
        pruner.step()
        if per_step:
            cfg = TrainConfig(epochs=per_step, batch_size=config.batch_size, lr=config.lr, seed=config.seed + step)
            train_loop(model, data, cfg, lambda m, x, y: F.cross_entropy(m(x), y), "prune_structured fine-tune", progress)
        report(progress, "prune_structured", step + 1, config.iterative_steps)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    macs1, params1 = tp.utils.count_ops_and_params(model, example)
    after = conv_channels(model)
    changed = {n: [before[n], after[n]] for n in before if n in after and before[n] != after[n]}
    return model, {
        "channels": changed,
        "channels_total": [sum(before.values()), sum(after.values())],
        "params": [int(params0), int(params1)],
        "macs": [int(macs0), int(macs1)],
    }
