"""Low-rank factorisation: truncated SVD of Linear and 1x1 Conv2d weights, each replaced by two
smaller layers (W ~ U_r S_r V_r^T -> [V_r^T scaled] then [U_r scaled]), by energy or fixed rank.
Repair: `epochs` (default 3 when training images are given) of distillation from the original
(kit.compress.repair, labels optional), `repair: finetune` for the labelled cross-entropy
fine-tune, `repair: none` or `epochs: 0` to factorise only."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from kit.compress.base import Pass, StepContext, StepResult
from kit.compress.repair import RepairConfig, check_repair, resolve_epochs, run_repair
from kit.errors import EdgeKitError
from kit.progress import ProgressFn

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kit.data import Dataset


@dataclass
class LowRank(Pass):
    energy: float | None = 0.9  # keep the smallest rank whose singular values hold this share of sum(s^2)
    rank: int | None = None  # or a fixed rank (overrides energy)
    min_features: int = 16  # layers with fewer in or out features are left alone
    exclude: list[str] = field(default_factory=list)
    epochs: int | None = None  # repair epochs after factorising; None: 3 with images
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    repair: str = "distill"  # distill (from the original, labels optional) | finetune (labels) | none
    max_seconds: float | None = 600.0
    method: Literal["lowrank"] = "lowrank"

    def __post_init__(self):
        if self.rank is None and self.energy is None:
            raise EdgeKitError("lowrank: give energy (e.g. 0.9) or rank")
        if self.rank is not None and self.rank < 1:
            raise EdgeKitError(f"lowrank rank={self.rank}: must be >= 1")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise EdgeKitError(f"lowrank energy={self.energy}: must be in (0, 1], e.g. 0.9")
        check_repair(self.repair, "lowrank", self.max_seconds)

    def apply(self, model, ctx: StepContext) -> StepResult:
        teacher = ctx.teacher if ctx.teacher is not None else ctx.original
        return StepResult(*lowrank(model, self, ctx.splits.train, ctx.progress, teacher=teacher))


def _target(m: nn.Module) -> bool:
    from torch import nn

    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1 and m.padding in ((0, 0), 0)


def _factor(weight: torch.Tensor, config: LowRank) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    import torch

    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    energy = torch.cumsum(s**2, 0) / torch.sum(s**2)
    if config.rank is not None:
        r = min(config.rank, len(s))
    else:
        r = int(torch.searchsorted(energy, torch.tensor(config.energy - 1e-9)).item()) + 1
        r = min(r, len(s))
    root = torch.sqrt(s[:r])
    return (root[:, None] * vh[:r]), (u[:, :r] * root[None, :]), r, float(energy[r - 1])


def lowrank(model: nn.Module, config: LowRank, data: Dataset | None = None, progress: ProgressFn = None,
            teacher: nn.Module | None = None):
    """Return (factorised copy of `model`, info: per-layer rank and energy, params before/after, repair)."""
    from torch import nn

    teacher = teacher if teacher is not None else model
    model = copy.deepcopy(model).eval()
    known = dict(model.named_modules())
    for name in config.exclude:
        if name not in known:
            raise EdgeKitError(f"lowrank exclude: no module named {name!r} in {type(model).__name__}")
    layers = {}
    for name, m in list(model.named_modules()):
        if not name or name in config.exclude or not _target(m):
            continue
        w = m.weight.detach()
        out_f, in_f = w.shape[0], w.shape[1]
        if min(out_f, in_f) < config.min_features:
            continue
        first, second, r, kept = _factor(w.reshape(out_f, in_f).double(), config)
        if r * (out_f + in_f) >= out_f * in_f:
            layers[name] = {"rank": r, "energy": round(kept, 4), "replaced": False, "reason": "no parameter saving"}
            continue
        if isinstance(m, nn.Linear):
            a = nn.Linear(in_f, r, bias=False)
            b = nn.Linear(r, out_f, bias=m.bias is not None)
            a.weight.data = first.float()
            b.weight.data = second.float()
        else:
            a = nn.Conv2d(in_f, r, 1, stride=m.stride, bias=False)
            b = nn.Conv2d(r, out_f, 1, bias=m.bias is not None)
            a.weight.data = first.float()[:, :, None, None]
            b.weight.data = second.float()[:, :, None, None]
        if m.bias is not None:
            b.bias.data = m.bias.detach().clone()
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], nn.Sequential(a, b))
        layers[name] = {"rank": r, "of": min(out_f, in_f), "energy": round(kept, 4), "replaced": True,
                        "params": [out_f * in_f, r * (out_f + in_f)]}
    if not any(v["replaced"] for v in layers.values()):
        raise EdgeKitError(f"lowrank: no Linear or 1x1 conv layer of {type(model).__name__} gets smaller at "
                           f"{'rank=' + str(config.rank) if config.rank else 'energy=' + str(config.energy)}; "
                           "lower energy/rank or min_features")
    repaired = {"repair": "none"}
    epochs = resolve_epochs(config.epochs, config.repair, data)
    if epochs > 0 and config.repair != "none":
        if data is None or (config.repair == "finetune" and data.y is None):
            raise EdgeKitError(f"lowrank epochs > 0 needs {'labelled ' if config.repair == 'finetune' else ''}training data (--data)")
        cfg = RepairConfig(epochs=epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed,
                           max_seconds=config.max_seconds)
        repaired = run_repair(model, teacher, data, config.repair, cfg, "lowrank repair", progress)
    return model.eval(), {"layers": layers, "replaced": sum(v["replaced"] for v in layers.values()), "repair": repaired}
