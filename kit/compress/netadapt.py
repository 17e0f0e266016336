"""Structured pruning by sensitivity, NetAdapt-style (Yang et al., ECCV 2018), on torch-pruning's
DepGraph: per-unit ratios from a measured sensitivity scan and a per-block latency table.

A unit is one DepGraph channel group (MobileNetV2: the expansion channels of each inverted residual,
the residual channels of each stage, the stem and the last conv). Each round:
1. scan: every unit alone pruned at each of `ratios` (of its current channels, lowest-L1 channels
   first) on a copy; measured on `scan_samples` train images against the ORIGINAL model: top-1
   agreement lost and the KL to its outputs (the ranking measure: on a few dozen images it
   separates units where agreement ties), plus the MACs and block milliseconds saved
   (kit.compress.latency_table, measured once per host and cached); with `reconstruct` (default)
   each pruned copy is first refitted by least squares (kit.compress.reconstruct) on
   `scan_fit_samples` other train images, so the ranking is of what survives reconstruction;
2. shrink where it buys most cost (ms with target_latency_ratio, else MACs) for least KL, unit by
   unit, until the round has cut `step` of the original cost;
3. reconstruct the layers fed by pruned channels on the train images outside the hold-out, distil
   from the original for `round_epochs` (kit.compress.repair) and check the top-1 agreement
   on a held-out share of the TRAIN split: below `min_agreement` the round is undone and the loop
   stops ("floor");
4. checkpoint the round ($EDGEKIT_CACHE/netadapt/<key>/): a re-run with the same model, data and
   settings continues from the last finished round (max_rounds and max_seconds may change).
After the last kept round, `epochs` of distillation repair the result (none when every round was
undone: the model is then the original). Bounded: rounds x units x ratios forwards of scan_samples
images, and `max_seconds` of host time for the rounds.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import ConfigDict

from kit.errors import EdgeKitError
from kit.progress import ProgressFn, report

if TYPE_CHECKING:
    from torch import nn

    from kit.data import Dataset

_NOT_IN_KEY = ("max_seconds", "epochs", "repair", "max_rounds", "resume")


@dataclass
class NetAdaptOptions:
    """The loop's knobs (prune_structured's `adapt`); the target, floor and repair epochs are
    prune_structured's own target_macs_ratio / target_latency_ratio, min_agreement and epochs."""

    __pydantic_config__ = ConfigDict(extra="forbid")
    step: float = 0.1  # each round cuts this share of the original cost
    ratios: list[float] = field(default_factory=lambda: [0.25, 0.5])  # per-unit fractions scanned
    max_rounds: int = 6
    round_epochs: int = 1  # distillation epochs after each round
    scan_samples: int = 48
    scan_fit_samples: int = 48  # images (not the scan's own) each scanned copy is reconstructed on
    min_channels: int = 8  # a unit is never pruned below this many channels
    threads: int = 1  # threads of the latency table
    max_seconds: float | None = 1800.0  # host-time cap of the rounds (the final repair has its own cap)
    resume: bool = True

    def __post_init__(self):
        if not 0.0 < self.step < 1.0 or not self.ratios or any(not 0.0 < r < 1.0 for r in self.ratios):
            raise EdgeKitError(f"prune_structured adapt step={self.step} ratios={self.ratios}: each must be in (0, 1)")
        if self.max_rounds < 1 or self.scan_samples < 2 or self.round_epochs < 0 or self.threads < 1:
            raise EdgeKitError("prune_structured adapt: need max_rounds >= 1, scan_samples >= 2, round_epochs >= 0, threads >= 1")


def as_options(value) -> NetAdaptOptions:
    if value is None or isinstance(value, NetAdaptOptions):
        return value or NetAdaptOptions()
    if isinstance(value, dict):
        try:
            return NetAdaptOptions(**value)
        except TypeError as e:
            raise EdgeKitError(f"prune_structured adapt: {e}; fields are {', '.join(NetAdaptOptions.__dataclass_fields__)}") from e
    raise EdgeKitError(f"prune_structured adapt={value!r}: give a mapping of step, ratios, max_rounds, ...")


def _classifier(model: nn.Module) -> list:
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return [linears[-1]] if linears else ([convs[-1]] if convs else [])


def _dg(model: nn.Module, example):
    import torch_pruning as tp

    return tp.DependencyGraph().build_dependency(model, example_inputs=example)


def _ignored(model: nn.Module, names) -> list:
    known = dict(model.named_modules())
    for n in names:
        if n not in known:
            raise EdgeKitError(f"prune_netadapt ignore: no module named {n!r} in {type(model).__name__}")
    return _classifier(model) + [known[n] for n in names]


def units(model: nn.Module, example, ignore=()) -> dict[str, int]:
    """Unit name (the DepGraph group's root conv) -> its current channel count."""
    from torch import nn

    names = {m: n for n, m in model.named_modules()}
    groups = _dg(model, example).get_all_groups(ignored_layers=_ignored(model, ignore), root_module_types=[nn.Conv2d])
    return {names[g[0].dep.target.module]: g[0].dep.target.module.out_channels for g in groups}


def prune_unit(model: nn.Module, example, name: str, ratio: float, min_channels: int = 8,
               round_to: int | None = None) -> tuple[int, int] | None:
    """Remove `ratio` of unit `name`'s channels (lowest group L1 first) in place; (before, after) or None."""
    import torch_pruning as tp

    dg = _dg(model, example)
    root = model.get_submodule(name)
    c = root.out_channels
    keep = max(min_channels, int(round(c * (1 - ratio))))
    if round_to:
        keep = max(round_to, keep // round_to * round_to)
    if keep >= c:
        return None
    fn = dg.get_pruner_of_module(root).prune_out_channels
    scores = tp.importance.GroupMagnitudeImportance(p=1)(dg.get_pruning_group(root, fn, idxs=list(range(c))))
    idxs = scores.argsort()[: c - keep].tolist()
    dg.get_pruning_group(root, fn, idxs=idxs).prune()
    return c, keep


def _logits(model, x, batch=32):
    import torch

    model.eval()
    with torch.no_grad():
        return torch.cat([model(torch.from_numpy(x[i:i + batch])) for i in range(0, len(x), batch)])


def _cost(model, example, table) -> dict:
    # torch's FlopCounterMode counts at the op level: torch-pruning's module counter misses Conv2d
    # subclasses with their own forward (EfficientNet-Lite's padded convs: 27M of 502M MACs)
    from kit.evaluate import count_macs, count_params

    macs, params = count_macs(model, tuple(example.shape)), count_params(model)
    ms = table.model_ms(model, example) if table is not None else {}
    return {"macs": int(macs), "params": int(params), "ms": round(sum(ms.values()), 4) if ms else None}


def scan(model: nn.Module, teacher_logits, x, example, ratios, table, *, ignore=(), min_channels: int = 8,
         round_to: int | None = None, progress: ProgressFn = None, teacher: nn.Module | None = None,
         fit_x=None) -> list[dict]:
    """Rows {unit, channels, ratio, agreement, agreement_lost, kl, macs_saved, ms_saved} for every unit
    of `model` alone pruned at every ratio, least KL per MAC saved first (the prune part of the
    sensitivity analysis; kit.compress.sensitivity.block_sensitivity is this function). With
    `teacher` and `fit_x` (images other than `x`), each pruned copy is first reconstructed
    (kit.compress.reconstruct) on them, so the scan ranks what pruning + reconstruction loses."""
    import torch.nn.functional as F

    from kit.compress.reconstruct import reconstruct

    ref_top1 = teacher_logits.argmax(1)
    logp_t = F.log_softmax(teacher_logits, 1)

    def measure(m):
        out = _logits(m, x)
        kl = float(F.kl_div(F.log_softmax(out, 1), logp_t, log_target=True, reduction="batchmean"))
        return float((out.argmax(1) == ref_top1).float().mean()), max(0.0, kl)

    base = _cost(model, example, table)
    agree0, kl0 = measure(model)
    todo = units(model, example, ignore)
    rows = []
    for i, (name, ch) in enumerate(todo.items()):
        for r in sorted(ratios):
            m = copy.deepcopy(model)
            done = prune_unit(m, example, name, r, min_channels, round_to)
            if done is None:
                continue
            if teacher is not None and fit_x is not None and len(fit_x):
                reconstruct(m, teacher, fit_x)
            a, kl = measure(m)
            c = _cost(m, example, table)
            rows.append({"unit": name, "channels": list(done), "ratio": r, "agreement": round(a, 4),
                         "agreement_lost": round(agree0 - a, 4), "kl": round(kl - kl0, 5),
                         "macs_saved": base["macs"] - c["macs"],
                         "ms_saved": None if c["ms"] is None else round(base["ms"] - c["ms"], 4)})
        report(progress, "prune_netadapt scan", i + 1, len(todo))
    if table is not None:
        table.save()
    rows.sort(key=lambda row: max(row["kl"], 0.0) / max(row["macs_saved"], 1))
    return rows


def choose(rows: list[dict], goal: float, by: str) -> dict[str, float]:
    """Units and ratios to prune this round: least KL per cost saved, one ratio per unit, until `goal`."""
    key = "ms_saved" if by == "ms" else "macs_saved"
    ranked = sorted((r for r in rows if (r[key] or 0) > 0), key=lambda r: max(r["kl"], 0.0) / r[key])
    chosen, saved = {}, 0.0
    for r in ranked:
        if r["unit"] in chosen:
            continue
        chosen[r["unit"]] = r["ratio"]
        saved += r[key]
        if saved >= goal:
            break
    return chosen


def state_dir(model, teacher, data: Dataset, config) -> Path:
    from kit.cache import cache_dir, hash_arrays, hash_module

    params = {k: v for k, v in config.params().items() if k not in _NOT_IN_KEY}
    params["adapt"] = {k: v for k, v in params["adapt"].items() if k not in _NOT_IN_KEY}
    h = hashlib.sha256(f"{hash_module(model)}|{hash_module(teacher)}|{hash_arrays(data.x)}|"
                       f"{json.dumps(params, sort_keys=True)}".encode()).hexdigest()[:20]
    return cache_dir().parent / "netadapt" / h


def _save(path: Path, model, state: dict, name: str) -> None:
    import torch

    path.mkdir(parents=True, exist_ok=True)
    tmp = path / f".{name}.tmp"
    torch.save(model, tmp)
    os.replace(tmp, path / name)
    (path / ".state.tmp").write_text(json.dumps(state, indent=1))
    os.replace(path / ".state.tmp", path / "state.json")


def _load(path: Path, max_rounds: int):
    """(state, model) of an earlier run with the same key; a run that stopped on max_rounds or
    max_seconds continues from its last round when more rounds are allowed now."""
    import torch

    try:
        state = json.loads((path / "state.json").read_text())
        if state["done"] and state["stopped"] in ("max_rounds", "max_seconds") and len(state["rounds"]) < max_rounds:
            if not state["rounds"]:
                return None, None
            state.update(done=False, stopped=None, checkpoint=f"round-{len(state['rounds'])}.pt")
            state.pop("final", None), state.pop("repair", None)
        return state, torch.load(path / state["checkpoint"], weights_only=False)
    except (OSError, ValueError, KeyError):
        return None, None


def netadapt(model: nn.Module, teacher: nn.Module, data: Dataset, config, example,
             progress: ProgressFn = None) -> tuple[nn.Module, dict]:
    """`config` is a kit.compress.structured.PruneStructured with a target. Return (pruned and
    distilled copy of `model`, info: rounds, target, costs, the first round's scan, repair)."""

    from kit.compress.latency_table import LatencyTable
    from kit.compress.reconstruct import reconstruct
    from kit.compress.repair import RepairConfig, distill_repair, resolve_epochs, split_holdout, top1_agreement

    if data is None or len(data) < 8:
        raise EdgeKitError("prune_netadapt needs training images (at least 8; --data): the scan and the "
                           "distillation run on them, labels are not needed")
    t0 = time.time()
    opt = config.adapt
    teacher = copy.deepcopy(teacher).eval()
    table = LatencyTable(threads=opt.threads)
    by = "ms" if config.target_latency_ratio is not None else "macs"
    target = config.target_latency_ratio if by == "ms" else config.target_macs_ratio
    fit_idx, hold = split_holdout(len(data), 0.15, config.seed)
    hold_x = data.x[hold] if len(hold) else data.x
    hold_ref = _logits(teacher, hold_x).argmax(1)
    scan_x = data.x[: opt.scan_samples]
    scan_ref = _logits(teacher, scan_x)
    # least-squares reconstruction never sees the hold-out; the scan's fits not its own images either
    fit_x = data.x[fit_idx] if config.reconstruct else None
    # the refit's targets come from the model as given (same layer names; a --teacher may differ)
    reference = copy.deepcopy(model).eval() if config.reconstruct else None
    scan_fit_x = data.x[fit_idx[fit_idx >= opt.scan_samples][: opt.scan_fit_samples]] if config.reconstruct else None
    where = state_dir(model, teacher, data, config)
    state, current = _load(where, opt.max_rounds) if opt.resume else (None, None)
    if current is None:
        current = copy.deepcopy(model).eval()
        c0 = _cost(current, example, table)
        if by == "ms" and c0["ms"] is None:
            raise EdgeKitError(f"prune_netadapt target_latency_ratio: {type(model).__name__} has no block sequence "
                               "to time; use target_macs_ratio")
        state = {"original": c0, "rounds": [], "done": False, "stopped": None, "scan": None}
    resumed = len(state["rounds"])
    rcfg = lambda epochs, seed: RepairConfig(epochs=epochs, lr=config.lr, batch_size=config.batch_size,  # noqa: E731
                                             seed=seed, augment=config.augment, temperature=config.temperature,
                                             max_seconds=config.max_seconds)
    c0, cost = state["original"], state["rounds"][-1]["cost"] if state["rounds"] else state["original"]
    while not state["done"]:
        k = len(state["rounds"]) + 1
        if cost[by] <= target * c0[by]:
            state["stopped"] = "target"
        elif k > opt.max_rounds:
            state["stopped"] = "max_rounds"
        elif opt.max_seconds is not None and time.time() - t0 > opt.max_seconds:
            state["stopped"] = "max_seconds"
        if state["stopped"]:
            break
        t_round = time.time()
        # MACs targets need no timing in the scan (the table still times the result of every round)
        rows = scan(current, scan_ref, scan_x, example, opt.ratios, table if by == "ms" else None, ignore=config.ignore,
                    min_channels=opt.min_channels, round_to=config.round_to, progress=progress, teacher=reference,
                    fit_x=scan_fit_x)
        state["scan"] = state["scan"] or rows
        goal = min(opt.step * c0[by], cost[by] - target * c0[by])
        chosen = choose(rows, goal, by)
        if not chosen:
            state["stopped"] = "nothing left to prune"
            break
        candidate = copy.deepcopy(current)
        pruned = {u: prune_unit(candidate, example, u, r, opt.min_channels, config.round_to) for u, r in chosen.items()}
        rebuilt = reconstruct(candidate, reference, fit_x) if fit_x is not None else None
        if opt.round_epochs:
            distill_repair(candidate, teacher, data, rcfg(opt.round_epochs, config.seed + k), label=f"prune_netadapt round {k}")
        agree = top1_agreement(candidate, hold_ref, hold_x)
        new_cost = _cost(candidate, example, table)
        row = {"round": k, "pruned": {u: list(v) for u, v in pruned.items() if v}, "cost": new_cost,
               "reconstructed": None if rebuilt is None else {"layers": len(rebuilt["layers"]), "seconds": rebuilt["seconds"]},
               "agreement_holdout": round(agree, 4), "seconds": round(time.time() - t_round, 1)}
        if agree < config.min_agreement:
            state["stopped"] = f"floor (round {k} agreement {agree:.3f} < {config.min_agreement}: undone)"
            state["undone"] = row
            break
        current, cost = candidate, new_cost
        state["rounds"].append(row)
        state["checkpoint"] = f"round-{k}.pt"
        _save(where, current, state, state["checkpoint"])
        report(progress, "prune_netadapt round", k, opt.max_rounds)
    table.save()
    if not state["done"]:
        epochs = resolve_epochs(config.epochs, config.repair, data)
        if not state["rounds"]:  # every round undone: the model is the original, nothing to repair
            state["repair"] = {"repair": "skipped: no round kept, the model is the original"}
        elif epochs and config.repair == "distill":
            current, rep = distill_repair(current, teacher, data, rcfg(epochs, config.seed),
                                          label="prune_netadapt repair", progress=progress)
            state["repair"] = rep
        state["done"], state["checkpoint"] = True, "final.pt"
        state["final"] = _cost(current, example, table)
        state["final"]["agreement_holdout"] = round(top1_agreement(current, hold_ref, hold_x), 4)
        _save(where, current, state, "final.pt")
    for p in current.parameters():
        p.requires_grad_(True)
    info = {"by": by, "target": target, "original": c0, "final": state["final"], "rounds": state["rounds"],
            "stopped": state["stopped"], "resumed_rounds": resumed, "state_dir": str(where),
            "reached": state["final"][by] <= target * c0[by] + 1e-9, "seconds": round(time.time() - t0, 1),
            "scan": (state["scan"] or [])[:12], "repair": state.get("repair")}
    return current.eval(), info
