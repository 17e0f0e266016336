"""Apply one recipe to one model: run its compression chain, package the result for the recipe's
runtime and format, and measure its accuracy on the host. (Measuring it on a device is
kit.devices.bench's job; kit.search does both for many recipes.)"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from kit.data import Splits
from kit.errors import EdgeKitError
from kit.progress import ProgressFn
from kit.recipes.schema import Recipe


@dataclass
class AppliedRecipe:
    recipe: str
    bundle_path: str
    model_sha256: str
    size_bytes: int
    accuracy: float | None
    baseline_accuracy: float | None
    gate_passed: bool
    seconds: float
    report: dict = field(default_factory=dict)
    from_cache: bool = False

    @property
    def top1_drop(self) -> float | None:
        """Points of top-1 lost against the original model."""
        if self.accuracy is None or self.baseline_accuracy is None:
            return None
        return 100.0 * (self.baseline_accuracy - self.accuracy)


def check_input(recipe: Recipe, splits: Splits) -> None:
    channels = splits.train.x.shape[1]
    if recipe.input.channels is not None and recipe.input.channels != channels:
        raise EdgeKitError(f"recipe {recipe.name} ({recipe.source}): input.channels={recipe.input.channels} but data "
                           f"{splits.name!r} has {channels}; use --set input.channels={channels}")
    size = splits.train.x.shape[-1]
    if recipe.input.image_size is not None and recipe.input.image_size != size:
        raise EdgeKitError(f"recipe {recipe.name}: input.image_size={recipe.input.image_size} but the data was loaded at "
                           f"{size}; load it with image_size={recipe.input.image_size}")


def json_safe(obj):
    """The chain's report with non-finite floats (an SQNR of inf for identical outputs) as strings:
    the signed manifest is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def apply_recipe(recipe: Recipe, model, splits: Splits, out_dir: str | Path, *, teacher=None,
                 baseline_accuracy: float | None = None, name: str = "model", cache: bool = False,
                 progress: ProgressFn = None) -> AppliedRecipe:
    """Compress `model` as `recipe` says and package it into `out_dir` (a bundle folder).

    This is `edgekit compress` (kit.compress.job.compress_job) with the budget reported rather than
    enforced, since a search wants over-budget candidates on its front too. `cache=True` reuses an
    identical earlier build (kit.cache: weights, recipe, data, teacher, bundle name, signing key).
    """
    from kit.compress.job import compress_job

    check_input(recipe, splits)
    out_dir = Path(out_dir)
    t0 = time.time()
    work = out_dir.with_name(out_dir.name + ".job")
    shutil.rmtree(work, ignore_errors=True)
    outcome = compress_job(model, recipe, splits, work, teacher=teacher, override_budget=True, name=name,
                           progress=progress, cache=cache)
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.move(str(outcome.bundle_path), str(out_dir))
    shutil.rmtree(work, ignore_errors=True)
    report = json_safe(outcome.report)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    if baseline_accuracy is None:
        baseline_accuracy = report["baseline"].get("top1")
    applied = AppliedRecipe(recipe=recipe.name, bundle_path=str(out_dir), model_sha256=manifest["model"]["sha256"],
                            size_bytes=int(manifest["model"]["size"]), accuracy=report["artifact"].get("top1"),
                            baseline_accuracy=baseline_accuracy,
                            gate_passed=bool(report["gate"]["passed"] and outcome.gate_passed),
                            seconds=time.time() - t0, report=report, from_cache=bool(report.get("from_cache")))
    if recipe.budget.top1_drop is not None and applied.top1_drop is not None:
        # The packaged artifact is what ships, so the gate is judged on it, not on the torch model.
        applied.gate_passed = applied.gate_passed and applied.top1_drop <= recipe.budget.top1_drop + 1e-9
    return applied
