"""Unstructured magnitude pruning with torch.nn.utils.prune (global or per layer, one-shot or
gradual over fine-tuning steps), made permanent with prune.remove, with per-layer sparsity reported.

Zeros in a dense tensor do not make a dense kernel faster or a .pte smaller; what they buy is
compressibility (the gzip size the report shows) and a start for sparse kernels.

Repair after a one-shot prune: distillation from the original model (kit.compress.repair; labels
optional, masks stay attached so pruned weights stay zero), `repair: finetune` for the labelled
cross-entropy fine-tune, `none` to skip. The gradual schedule prunes while fine-tuning on labels.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from kit.compress.base import Pass, StepContext, StepResult
from kit.compress.distill import TrainConfig, train_loop
from kit.compress.repair import RepairConfig, check_repair, resolve_epochs, run_repair
from kit.errors import EdgeKitError
from kit.progress import ProgressFn

if TYPE_CHECKING:
    from torch import nn

    from kit.data import Dataset


def _is_prunable(m) -> bool:
    from torch import nn

    return isinstance(m, (nn.Conv2d, nn.Conv1d, nn.Linear))


@dataclass
class Prune(Pass):
    amount: float = 0.5  # fraction of weights set to zero (of the pool: all layers if global, each layer if not)
    scope: str = "global"  # global | layer
    schedule: str = "oneshot"  # oneshot | gradual (cubic ramp over the fine-tune steps, Zhu & Gupta 2017)
    epochs: int | None = None  # repair epochs after (oneshot) or fine-tune while (gradual); None: 3 with images
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    exclude: list[str] = field(default_factory=list)  # module names left dense
    per_layer: dict[str, float] = field(default_factory=dict)  # scope=layer: module name -> amount override
    repair: str = "distill"  # oneshot: distill (from the original) | finetune (labels) | none
    max_seconds: float | None = 600.0
    augment: str = "auto"
    method: Literal["prune"] = "prune"

    def __post_init__(self):
        for where, a in [("amount", self.amount), *((f"per_layer[{k}]", v) for k, v in self.per_layer.items())]:
            if not 0.0 <= a < 1.0:
                raise EdgeKitError(f"prune {where}={a}: the pruning ratio must be in [0, 1), e.g. 0.5 for half the weights")
        if self.scope not in ("global", "layer"):
            raise EdgeKitError(f"prune scope={self.scope!r}: choose global or layer")
        if self.schedule not in ("oneshot", "gradual"):
            raise EdgeKitError(f"prune schedule={self.schedule!r}: choose oneshot or gradual")
        check_repair(self.repair, "prune", self.max_seconds)
        if self.schedule == "gradual" and (self.epochs or 0) < 1:
            raise EdgeKitError("prune schedule=gradual needs epochs >= 1 (pruning is spread over the fine-tune steps)")

    def apply(self, model, ctx: StepContext) -> StepResult:
        teacher = ctx.teacher if ctx.teacher is not None else ctx.original
        return StepResult(*prune(model, self, ctx.splits.train, ctx.progress, teacher=teacher))


def prunable_layers(model: nn.Module, exclude=()) -> list[tuple[str, nn.Module]]:
    known = dict(model.named_modules())
    for name in exclude:
        if name not in known:
            raise EdgeKitError(f"prune exclude: no module named {name!r} in {type(model).__name__}")
    return [(n, m) for n, m in model.named_modules() if _is_prunable(m) and n not in exclude]


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in each Conv/Linear weight (works before and after prune.remove)."""
    out = {}
    for name, m in model.named_modules():
        if _is_prunable(m):
            w = m.weight.detach()
            out[name] = round(float((w == 0).sum()) / w.numel(), 4)
    return out


def global_sparsity(model: nn.Module) -> float:
    zeros = total = 0
    for _, m in model.named_modules():
        if _is_prunable(m):
            zeros += int((m.weight.detach() == 0).sum())
            total += m.weight.numel()
    return round(zeros / total, 4) if total else 0.0


def _prune_to(layers, config: Prune, target: float, done: float) -> None:
    """Raise sparsity from `done` to `target`: torch's pruning composes on the still-unpruned weights."""
    from torch.nn.utils import prune as tprune

    if target <= done:
        return
    step = (target - done) / (1.0 - done)
    if config.scope == "global":
        tprune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=tprune.L1Unstructured, amount=step)
    else:
        for name, m in layers:
            goal = config.per_layer.get(name, config.amount) * (target / config.amount if config.amount else 1.0)
            prev = config.per_layer.get(name, config.amount) * (done / config.amount if config.amount else 1.0)
            if goal > prev:
                tprune.l1_unstructured(m, "weight", amount=(goal - prev) / (1.0 - prev))


def prune(model: nn.Module, config: Prune, data: Dataset | None = None, progress: ProgressFn = None,
          teacher: nn.Module | None = None):
    """Return (pruned copy of `model`, info dict with per-layer sparsity and the repair); the repair
    distils from `teacher` (default: `model` as given)."""
    import torch.nn.functional as F
    from torch.nn.utils import prune as tprune

    teacher = teacher if teacher is not None else model
    model = copy.deepcopy(model)
    layers = prunable_layers(model, config.exclude)
    if not layers:
        raise EdgeKitError(f"prune: {type(model).__name__} has no Conv/Linear layer to prune")
    unknown = set(config.per_layer) - {n for n, _ in layers}
    if unknown:
        raise EdgeKitError(f"prune per_layer: no prunable layer named {sorted(unknown)[0]!r}")
    epochs = config.epochs if config.schedule == "gradual" else resolve_epochs(config.epochs, config.repair, data)
    labels = config.schedule == "gradual" or config.repair == "finetune"
    if epochs > 0 and config.repair != "none" and (data is None or (labels and data.y is None)):
        raise EdgeKitError(f"prune epochs={epochs} needs {'labelled ' if labels else ''}training data (--data)")
    target = config.amount if config.scope == "global" else 1.0 * config.amount
    repaired = {"repair": "none"}
    train_cfg = TrainConfig(epochs=epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed)
    loss = lambda m, x, y: F.cross_entropy(m(x), y)  # noqa: E731

    if config.schedule == "oneshot":
        _prune_to(layers, config, target, 0.0)
        if epochs > 0 and config.repair != "none":
            # The masks stay attached while repairing, so pruned weights stay at zero.
            cfg = RepairConfig(epochs=epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
                               augment=config.augment, max_seconds=config.max_seconds)
            repaired = run_repair(model, teacher, data, config.repair, cfg, "prune repair", progress)
    else:
        state = {"done": 0.0}
        stages = 10

        def on_step(step: int, total: int) -> None:
            # Cubic schedule: prune fast early, slow late, reach the target at 80% of the steps.
            end = max(1, int(0.8 * total))
            if step > end or step % max(1, end // stages) and step != end:
                return
            frac = min(1.0, step / end)
            goal = target * (1.0 - (1.0 - frac) ** 3)
            _prune_to(layers, config, goal, state["done"])
            state["done"] = max(state["done"], goal)

        train_loop(model, data, train_cfg, loss, "gradual prune", progress, on_step=on_step)
        _prune_to(layers, config, target, state["done"])
    for _, m in layers:
        if tprune.is_pruned(m):
            tprune.remove(m, "weight")  # bake the mask into the weight: a plain module again
    model.eval()
    return model, {"layer_sparsity": layer_sparsity(model), "global_sparsity": global_sparsity(model), "repair": repaired}
