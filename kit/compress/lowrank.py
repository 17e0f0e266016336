"""Low-rank factorisation: truncated SVD of Linear and 1x1 Conv2d weights, each replaced by two
smaller layers (W ~ U_r S_r V_r^T -> [V_r^T scaled] then [U_r scaled]), by energy or fixed rank."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from kit.compress.base import Pass, StepContext, StepResult
from kit.compress.distill import TrainConfig, train_loop
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
    epochs: int = 0  # optional fine-tune after factorising
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    method: Literal["lowrank"] = "lowrank"

    def __post_init__(self):
        if self.rank is None and self.energy is None:
            raise EdgeKitError("lowrank: give energy (e.g. 0.9) or rank")
        if self.rank is not None and self.rank < 1:
            raise EdgeKitError(f"lowrank rank={self.rank}: must be >= 1")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise EdgeKitError(f"lowrank energy={self.energy}: must be in (0, 1], e.g. 0.9")

    def apply(self, model, ctx: StepContext) -> StepResult:
        return StepResult(*lowrank(model, self, ctx.splits.train, ctx.progress))


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


def lowrank(model: nn.Module, config: LowRank, data: Dataset | None = None, progress: ProgressFn = None):
    """Return (factorised copy of `model`, info: per-layer rank and energy, params before/after)."""
    import torch.nn.functional as F
    from torch import nn

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
    if config.epochs > 0:
        if data is None or data.y is None:
            raise EdgeKitError("lowrank epochs > 0 needs labelled training data for the fine-tune (--data)")
        cfg = TrainConfig(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr, seed=config.seed)
        train_loop(model, data, cfg, lambda m, x, y: F.cross_entropy(m(x), y), "lowrank fine-tune", progress)
    return model.eval(), {"layers": layers, "replaced": sum(v["replaced"] for v in layers.values())}
