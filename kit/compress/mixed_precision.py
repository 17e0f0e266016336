"""Accuracy-aware mixed precision: keep the fewest layers in float until the budget holds.

Shared by PT2E/XNNPACK (kit.compress.quantize, `skip_layers`) and ORT QDQ (kit.compress.ort_quant,
`nodes_to_exclude`), asked for with `keep_float: auto`:

1. the calibration set is split: its last `holdout` inputs are never used for calibration, only
   to check each candidate (the gate's test data is never looked at);
2. the fully int8 model is quantized and checked on the held-out inputs (output SQNR and top-1
   agreement with the float model);
3. while the targets (`target_sqnr_db`, `target_agreement`) do not hold, the next layer of the
   sensitivity ranking (one layer at a time quantized, worst first) goes to float and the model
   is re-quantized and re-checked; a layer stays float only if the check improved, and never when
   the share of MACs left in int8 would fall below `min_int8_macs` (MACs read from the artifact,
   kit.compress.int8_share);
4. at most `max_keep_float` layers stay float and at most `max_trials` re-quantizations run.

The result names each layer kept in float and why (the held-out SQNR/agreement before and after),
the layers tried and sent back to int8, and whether the targets held.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from kit.data import Dataset
from kit.errors import EdgeKitError

AUTO = "auto"


@dataclass
class Check:
    """One candidate: which layers are float, what it scored on the held-out inputs."""

    float_layers: list[str]
    sqnr_db: float
    agreement: float
    int8_macs_share: float | None
    artifact: Any = field(default=None, repr=False)

    def row(self) -> dict:
        return {"float_layers": list(self.float_layers), "sqnr_db": round(self.sqnr_db, 2),
                "agreement": round(self.agreement, 4), "int8_macs_share": self.int8_macs_share}


def check_settings(owner: str, keep_float, min_int8_macs: float, holdout: int, max_keep_float: int) -> None:
    if keep_float != AUTO and (not isinstance(keep_float, int) or keep_float < 0):
        raise EdgeKitError(f"{owner} keep_float={keep_float!r}: give a count >= 0 or 'auto'")
    if not 0.0 <= min_int8_macs <= 1.0:
        raise EdgeKitError(f"{owner} min_int8_macs={min_int8_macs}: give a share in [0, 1], e.g. 0.95")
    if holdout < 1 or max_keep_float < 0:
        raise EdgeKitError(f"{owner} holdout={holdout} max_keep_float={max_keep_float}: holdout >= 1, max_keep_float >= 0")


def split_holdout(calib: Dataset, holdout: int, owner: str) -> tuple[Dataset, Dataset]:
    """(calibration part, held-out part): the last `holdout` inputs are held out; at least as many
    stay for calibration (a small set gives up to half)."""
    if calib is None or len(calib) < 2:
        raise EdgeKitError(f"{owner} keep_float=auto: needs at least 2 calibration samples (some are held out "
                           "to check each candidate); give more --data")
    if calib.multi_input:
        raise EdgeKitError(f"{owner} keep_float=auto: takes single-input models for now; name the float layers "
                           "yourself (skip_layers / nodes_to_exclude) for a model with several inputs")
    n = min(holdout, len(calib) // 2)
    return Dataset(calib.x[:-n], None), Dataset(calib.x[-n:], None)


def score(reference: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    from kit.evaluate import sqnr_db

    sq = float(sqnr_db(reference, out))
    return (sq if np.isfinite(sq) else 999.0), float(np.mean(reference.argmax(1) == out.argmax(1)))


def meets(check: Check, target_sqnr_db: float | None, target_agreement: float | None) -> bool:
    return ((target_sqnr_db is None or check.sqnr_db >= target_sqnr_db)
            and (target_agreement is None or check.agreement >= target_agreement))


def better(new: Check, old: Check, min_gain_db: float = 0.05) -> bool:
    """A layer earns its float place if the held-out check improved: more agreement at no SQNR
    loss, or more SQNR at no agreement loss."""
    if new.agreement > old.agreement and new.sqnr_db >= old.sqnr_db - min_gain_db:
        return True
    return new.agreement >= old.agreement and new.sqnr_db > old.sqnr_db + min_gain_db


def greedy_keep_float(ranked: list[str], layer_macs: dict[str, int], total_macs: int,
                      evaluate: Callable[[list[str]], Check], *, min_int8_macs: float = 0.95,
                      target_sqnr_db: float | None = 18.0, target_agreement: float | None = 0.90,
                      max_keep_float: int = 8, max_trials: int = 12, base: list[str] = ()) -> tuple[Check, dict]:
    """The loop of the module docstring. `ranked`: candidate layers, most sensitive first;
    `layer_macs`: MACs per candidate (for the min_int8_macs floor); `evaluate(float_layers)`
    quantizes with those layers in float and checks it. `base`: layers the user keeps float
    anyway (they count against the floor). Returns (the chosen check, the report)."""
    current = evaluate(list(base))
    first = current.row()
    trials, tried = 1, []
    kept: list[dict] = []
    float_macs = sum(layer_macs.get(n, 0) for n in base)
    for layer in ranked:
        if meets(current, target_sqnr_db, target_agreement):
            break
        if len(kept) >= max_keep_float or trials >= max_trials:
            tried.append({"layer": layer, "result": f"not tried: limit reached (max_keep_float={max_keep_float}, "
                                                      f"max_trials={max_trials})"})
            break
        if layer in base:
            continue
        macs = layer_macs.get(layer, 0)
        if total_macs and 1.0 - (float_macs + macs) / total_macs < min_int8_macs - 1e-9:
            tried.append({"layer": layer, "result": f"stays int8: float would leave "
                                                      f"{1.0 - (float_macs + macs) / total_macs:.1%} of MACs in int8 "
                                                      f"(min_int8_macs={min_int8_macs})"})
            continue
        trial = evaluate([*current.float_layers, layer])
        trials += 1
        if trial.int8_macs_share is not None and trial.int8_macs_share < min_int8_macs - 1e-9:
            tried.append({"layer": layer, "result": f"back to int8: the artifact had {trial.int8_macs_share:.1%} of MACs "
                                                      f"in int8 (min_int8_macs={min_int8_macs})"})
            continue
        gain = {"layer": layer, "macs_share": round(macs / total_macs, 4) if total_macs else None,
                "before": current.row() | {"float_layers": None}, "after": trial.row() | {"float_layers": None}}
        if better(trial, current):
            gain["why"] = (f"held-out SQNR {current.sqnr_db:.2f} -> {trial.sqnr_db:.2f} dB, agreement "
                           f"{current.agreement:.3f} -> {trial.agreement:.3f}")
            kept.append(gain)
            float_macs += macs
            current = trial
        else:
            gain["result"] = "back to int8: no gain on the held-out inputs"
            tried.append(gain)
    met = meets(current, target_sqnr_db, target_agreement)
    report = {"met": met, "targets": {"sqnr_db": target_sqnr_db, "agreement": target_agreement,
                                      "min_int8_macs": min_int8_macs},
              "all_int8": first, "chosen": current.row(), "kept_float": kept, "tried": tried, "trials": trials}
    if not met:
        report["note"] = (f"targets not reached on the held-out inputs with {len(kept)} layer(s) in float: the best "
                          f"found is kept; the floor of {min_int8_macs:.0%} MACs in int8 or the trial limit stopped it")
    return current, report


__all__ = ["AUTO", "Check", "check_settings", "greedy_keep_float", "meets", "score", "split_holdout"]


def module_macs(model, example) -> tuple[dict[str, int], int]:
    """MACs per Conv/Linear module name (per sample) from one forward pass, and their total."""
    from torch import nn

    from kit.compress.hooks import forward_once

    macs: dict[str, int] = {}

    def hook(name):
        def fn(mod, args, out):
            macs[name] = int(out[0].numel()) * int(mod.weight[0].numel())
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    forward_once(model, example, handles)
    return macs, sum(macs.values())


def _fixed_ranges(cfg, chosen: dict | None, observer_field: str):
    """The config the trials re-quantize with: the range choice `auto` made once, kept fixed."""
    import dataclasses

    if not chosen:
        return cfg
    if observer_field == "observer":  # PT2E
        return dataclasses.replace(cfg, observer=chosen["observer"], percentile=chosen.get("percentile") or cfg.percentile)
    if chosen["observer"] == "percentile":  # ORT
        return dataclasses.replace(cfg, calibration="Percentile", percentile=chosen["percentile"])
    return cfg


def pt2e_auto(model, cfg, calib: Dataset, input_shape, quantize_fn, progress=None):
    """`keep_float: auto` for kit.compress.quantize.Int8Static. `quantize_fn` is
    kit.compress.quantize.quantize (passed in: that module calls this one). Returns (QuantizedModel,
    config with the chosen skip_layers, report)."""
    import dataclasses

    import torch

    from kit.compress.int8_share import artifact_share
    from kit.compress.sensitivity import quant_sensitivity
    from kit.evaluate import outputs, torch_predictor

    part, held = split_holdout(calib, cfg.holdout, "quantize")
    ref = outputs(torch_predictor(model), held, batch_size=16)
    corrected, details = model, {}
    trial_cfg = dataclasses.replace(cfg, keep_float=0, calib_batches=max(1, -(-len(part) // cfg.batch_size)))
    if cfg.bias_correction and cfg.per_channel:  # weights corrected once, on the calibration part only
        from kit.compress.weight_correction import correct_weights

        corrected, details["weight_correction"] = correct_weights(model, part, per_channel=True,
                                                                  max_samples=cfg.correction_samples,
                                                                  rounding=cfg.rounding)
        trial_cfg = dataclasses.replace(trial_cfg, bias_correction=False)
    macs, total = module_macs(corrected, torch.zeros((1, *part.x.shape[1:])))
    state = {"cfg": trial_cfg}

    def evaluate(float_layers: list[str]) -> Check:
        q = quantize_fn(corrected, dataclasses.replace(state["cfg"], skip_layers=list(float_layers)), part, input_shape)
        out = outputs(torch_predictor(q.module), held, batch_size=16 if q.batch_dynamic else 1)
        sq, agr = score(ref, out)
        return Check(list(float_layers), sq, agr, artifact_share(q)["int8_macs_share"], q)

    first = evaluate(list(cfg.skip_layers))
    details["activation_ranges"] = first.artifact.details.get("activation_ranges")
    state["cfg"] = _fixed_ranges(trial_cfg, (details["activation_ranges"] or {}).get("chosen"), "observer")
    ranked = []
    if not meets(first, cfg.target_sqnr_db, cfg.target_agreement):
        rows = quant_sensitivity(corrected, part, held, calib_samples=len(part), eval_samples=len(held), progress=progress)
        ranked = [r["layer"] for r in rows]
    chosen, report = greedy_keep_float(ranked, macs, total, _memo(evaluate, first), min_int8_macs=cfg.min_int8_macs,
                                       target_sqnr_db=cfg.target_sqnr_db, target_agreement=cfg.target_agreement,
                                       max_keep_float=cfg.max_keep_float, max_trials=cfg.max_trials,
                                       base=list(cfg.skip_layers))
    report["held_out"] = f"last {len(held)} of {len(calib)} calibration inputs (calibrated on the first {len(part)})"
    q = chosen.artifact
    q.details.update(details)
    return q, dataclasses.replace(cfg, skip_layers=list(chosen.float_layers)), report


def _memo(evaluate, first: Check):
    """evaluate() that answers the first (already measured) candidate from memory."""
    def fn(float_layers):
        return first if list(float_layers) == first.float_layers else evaluate(float_layers)
    return fn


def ort_auto(pre, cfg, calib: Dataset, out_path, quantize_to, sensitivity_fn, progress=None):
    """`keep_float: auto` for kit.compress.ort_quant.OrtInt8Static on the preprocessed fp32 .onnx
    `pre`. `quantize_to(config, calib, path) -> info` quantizes one candidate and
    `sensitivity_fn` is ort_quant.ort_sensitivity (both passed in: that module calls this one).
    Writes the chosen model to `out_path`; returns (config with the chosen nodes_to_exclude, report,
    the activation-range info of the all-int8 candidate)."""
    import dataclasses
    import shutil
    import tempfile
    from pathlib import Path

    from kit.compress.int8_share import onnx_macs, share
    from kit.evaluate import outputs
    from kit.package.onnx import OrtRunner

    out_path = Path(out_path)
    part, held = split_holdout(calib, cfg.holdout, "ort_quantize")
    ref = outputs(OrtRunner(pre), held)
    macs = {r["node"]: r["macs"] for r in onnx_macs(pre)}
    trial_cfg = dataclasses.replace(cfg, keep_float=0, max_samples=min(cfg.max_samples, len(part)))
    work = Path(tempfile.mkdtemp(prefix="keep-float-", dir=out_path.parent))
    state = {"cfg": trial_cfg, "n": 0}

    def evaluate(float_layers: list[str]) -> Check:
        state["n"] += 1
        path = work / f"trial{state['n']}.onnx"
        state["info"] = quantize_to(dataclasses.replace(state["cfg"], nodes_to_exclude=list(float_layers)), part, path)
        sq, agr = score(ref, outputs(OrtRunner(path), held))
        return Check(list(float_layers), sq, agr, share(onnx_macs(path))["int8_macs_share"], path)

    try:
        first = evaluate(list(cfg.nodes_to_exclude))
        ranges = state.get("info")
        state["cfg"] = _fixed_ranges(trial_cfg, (ranges or {}).get("chosen"), "calibration")
        ranked = []
        if not meets(first, cfg.target_sqnr_db, cfg.target_agreement):
            rows = sensitivity_fn(pre, part, held, config=cfg, calib_samples=len(part), eval_samples=len(held),
                                  progress=progress)
            ranked = [r["layer"] for r in rows]
        chosen, report = greedy_keep_float(ranked, macs, sum(macs.values()), _memo(evaluate, first),
                                           min_int8_macs=cfg.min_int8_macs, target_sqnr_db=cfg.target_sqnr_db,
                                           target_agreement=cfg.target_agreement, max_keep_float=cfg.max_keep_float,
                                           max_trials=cfg.max_trials, base=list(cfg.nodes_to_exclude))
        shutil.move(str(chosen.artifact), str(out_path))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["held_out"] = f"last {len(held)} of {len(calib)} calibration inputs (calibrated on the first {len(part)})"
    return dataclasses.replace(cfg, nodes_to_exclude=list(chosen.float_layers)), report, ranges
