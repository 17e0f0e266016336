"""Structured channel pruning with torch-pruning's DepGraph (Fang et al., CVPR 2023): channels are
physically removed, and coupled layers (residual adds, depthwise convs, BatchNorm, the next conv's
input) are pruned together so MobileNet/ResNet graphs stay consistent. Importance is the L1 or L2
norm of each channel group (Li et al., "Pruning Filters for Efficient ConvNets").

Reconstruction (kit.compress.reconstruct, `reconstruct: true` by default when images are given):
right after the cut, every 1x1 conv / Linear fed by pruned channels is refitted by least squares to
the original's output of that layer (the repair's hold-out images excluded).

Repair (kit.compress.repair): by default the pruned model is distilled from the ORIGINAL model
(ctx.teacher when given) on the training images, labels optional, for `epochs` epochs (default 3
when images are given), capped at `max_seconds`; `repair: finetune` is the older labelled
cross-entropy fine-tune, `repair: none` (or epochs: 0) prunes only. Per-block ratios chosen by a
sensitivity scan and a latency table (NetAdapt): give `target_macs_ratio` or `target_latency_ratio`
instead of `ratio`, and optionally `min_agreement` and `adapt` (kit.compress.netadapt)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from kit.compress.base import Pass, StepContext, StepResult
from kit.compress.netadapt import NetAdaptOptions, as_options, netadapt
from kit.compress.reconstruct import reconstruct
from kit.compress.repair import RepairConfig, check_repair, resolve_epochs, run_repair, split_holdout
from kit.errors import EdgeKitError
from kit.progress import ProgressFn, report

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kit.data import Dataset


@dataclass
class PruneStructured(Pass):
    ratio: float | None = None  # fraction of channels removed from each prunable group (uniform; default 0.5)
    # NetAdapt instead of a uniform ratio: per-unit ratios from a sensitivity scan and a latency table
    target_macs_ratio: float | None = None  # prune until MACs <= this share of the original
    target_latency_ratio: float | None = None  # or until the host-timed blocks' ms <= this share
    min_agreement: float = 0.85  # NetAdapt floor: held-out (train split) top-1 agreement with the original
    adapt: NetAdaptOptions = None  # type: ignore[assignment]  # the loop's knobs (kit.compress.netadapt)
    norm: str = "l1"  # l1 | l2
    global_pruning: bool = False
    iterative_steps: int = 1
    round_to: int | None = None  # keep channel counts multiples of this (SIMD-friendly, e.g. 8)
    epochs: int | None = None  # repair epochs after pruning (split across iterative steps); None: 3 with images
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    ignore: list[str] = field(default_factory=list)  # module names whose output channels stay
    repair: str = "distill"  # distill (from the original, labels optional) | finetune (labels) | none
    # least-squares refit of the layers fed by pruned channels, before the repair (kit.compress.reconstruct)
    reconstruct: bool = True
    max_seconds: float | None = 600.0  # host-time cap of the repair
    temperature: float = 2.0
    augment: str = "auto"  # auto (natural images only) | on | off
    method: Literal["prune_structured"] = "prune_structured"

    def __post_init__(self):
        self.adapt = as_options(self.adapt)
        targets = [t for t in ("target_macs_ratio", "target_latency_ratio") if getattr(self, t) is not None]
        if len(targets) == 2 or (targets and self.ratio is not None):
            raise EdgeKitError("prune_structured: give one of ratio (uniform), target_macs_ratio or target_latency_ratio (NetAdapt)")
        for t in targets:
            if not 0.0 < getattr(self, t) < 1.0:
                raise EdgeKitError(f"prune_structured {t}={getattr(self, t)}: must be in (0, 1), e.g. 0.5 for half the cost")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise EdgeKitError(f"prune_structured min_agreement={self.min_agreement}: must be in [0, 1], e.g. 0.9")
        if targets:
            return check_repair(self.repair, "prune_structured", self.max_seconds)
        if self.ratio is None:
            self.ratio = 0.5
        if not 0.0 < self.ratio < 1.0:
            raise EdgeKitError(f"prune_structured ratio={self.ratio}: must be in (0, 1), e.g. 0.3 to remove 30% of channels")
        if self.norm not in ("l1", "l2"):
            raise EdgeKitError(f"prune_structured norm={self.norm!r}: choose l1 or l2")
        if self.iterative_steps < 1:
            raise EdgeKitError(f"prune_structured iterative_steps={self.iterative_steps}: must be >= 1")
        check_repair(self.repair, "prune_structured", self.max_seconds)

    def apply(self, model, ctx: StepContext) -> StepResult:
        teacher = ctx.teacher if ctx.teacher is not None else ctx.original
        if self.adaptive:
            return StepResult(*netadapt(model, teacher, ctx.splits.train, self, ctx.example, ctx.progress))
        return StepResult(*prune_structured(model, self, ctx.example, ctx.splits.train, ctx.progress, teacher=teacher))


    @property
    def adaptive(self) -> bool:
        return self.target_macs_ratio is not None or self.target_latency_ratio is not None


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
                     progress: ProgressFn = None, teacher: nn.Module | None = None):
    """Return (pruned copy of `model`, info dict: channels before/after, params, MACs, repair).
    The repair distils from `teacher` (default: `model` as given, before pruning)."""
    import torch_pruning as tp

    from kit.evaluate import count_macs, count_params

    if config.adaptive:
        raise EdgeKitError("prune_structured with a target runs NetAdapt: call kit.compress.netadapt.netadapt")
    teacher = teacher if teacher is not None else model
    reference = copy.deepcopy(model).eval()  # the refit's targets: the same layers before the cut
    model = copy.deepcopy(model).eval()
    known = dict(model.named_modules())
    for name in config.ignore:
        if name not in known:
            raise EdgeKitError(f"prune_structured ignore: no module named {name!r} in {type(model).__name__}")
    epochs = resolve_epochs(config.epochs, config.repair, data)
    if epochs > 0 and config.repair != "none" and (data is None or (config.repair == "finetune" and data.y is None)):
        raise EdgeKitError(f"prune_structured epochs={epochs} repair={config.repair} needs "
                           f"{'labelled ' if config.repair == 'finetune' else ''}training data (--data)")
    ignored = _classifier(model, None) + [known[n] for n in config.ignore]
    before = conv_channels(model)
    macs0, params0 = count_macs(model, tuple(example.shape)), count_params(model)  # op-level (see netadapt._cost)
    importance = tp.importance.MagnitudeImportance(p=1 if config.norm == "l1" else 2)
    try:
        pruner = tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=config.ratio,
                                      global_pruning=config.global_pruning, iterative_steps=config.iterative_steps,
                                      ignored_layers=ignored, round_to=config.round_to)
    except Exception as e:
        raise EdgeKitError(f"prune_structured: torch-pruning cannot trace {type(model).__name__} "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:160]}); list unsupported modules in ignore") from e
    per_step = max(1, epochs // config.iterative_steps) if epochs else 0
    repairs, rebuilt = [], None
    for step in range(config.iterative_steps):
        pruner.step()
        if config.reconstruct and data is not None and len(data) >= 2:
            fit_idx, _ = split_holdout(len(data), RepairConfig.holdout, config.seed + step)  # the repair's hold-out stays unseen
            rebuilt = reconstruct(model, reference, data.x[fit_idx])
        if per_step and config.repair != "none":
            cfg = RepairConfig(epochs=per_step, batch_size=config.batch_size, lr=config.lr, seed=config.seed + step,
                               temperature=config.temperature, augment=config.augment, max_seconds=config.max_seconds)
            repairs.append(run_repair(model, teacher, data, config.repair, cfg, "prune_structured repair", progress))
        report(progress, "prune_structured", step + 1, config.iterative_steps)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    macs1, params1 = count_macs(model, tuple(example.shape)), count_params(model)
    after = conv_channels(model)
    changed = {n: [before[n], after[n]] for n in before if n in after and before[n] != after[n]}
    return model, {
        "channels": changed,
        "channels_total": [sum(before.values()), sum(after.values())],
        "params": [int(params0), int(params1)],
        "macs": [int(macs0), int(macs1)],
        "repair": repairs[-1] if repairs else {"repair": "none"},
        "reconstructed": rebuilt,
    }
