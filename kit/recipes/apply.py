"""Apply one recipe to one model: run its compression chain, package the result for the recipe's
runtime and format, and measure its accuracy on the host. (Measuring it on a device is
kit.fleet.bench's job; kit.search does both for many recipes.)"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kit.data import Splits
from kit.errors import EdgeKitError
from kit.evaluate import accuracy, torch_predictor
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


def _compress(recipe: Recipe, model, splits: Splits, teacher, progress: ProgressFn):
    from kit.compress.chain import run_chain

    result = run_chain(model, [dict(s) for s in recipe.compress], splits, budget_top1_drop=recipe.budget.top1_drop,
                       teacher=teacher, runtime=recipe.runtime, progress=progress)
    return result.model, json_safe(getattr(result, "report", {}) or {}), bool(getattr(result, "gate_passed", True))


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


def _package(recipe: Recipe, compressed, splits: Splits, out_dir: Path, name: str, compression: dict):
    from kit.package import package

    # .ort: kit.package converts with ORT's own converter and keeps the required-operators config.
    return package(compressed, recipe.format if recipe.format == "ort" else recipe.target, out_dir, splits.test.x[:1],
                   name=name, recipe=recipe.summary(), compression=compression or None)


def apply_recipe(recipe: Recipe, model, splits: Splits, out_dir: str | Path, *, teacher=None,
                 baseline_accuracy: float | None = None, name: str = "model", cache: bool = False,
                 progress: ProgressFn = None) -> AppliedRecipe:
    """Compress `model` as `recipe` says and package it into `out_dir` (a bundle folder).

    `cache=True` goes through the content-addressed build cache (kit.cache): the key covers the
    model's weights, the recipe (name, runtime, format, input, chain, budget), the data, the teacher,
    the bundle name and the signing key, so a hit is the very bundle this call would build.
    """
    check_input(recipe, splits)
    if baseline_accuracy is None and splits.test.y is not None:
        baseline_accuracy = accuracy(torch_predictor(model), splits.test)
    if not cache:
        return _apply(recipe, model, splits, Path(out_dir), teacher, baseline_accuracy, name, progress)
    from kit.cache import build_key, cached, hash_arrays, hash_module
    from kit.package.signing import key_id

    # The recipe's name is part of the key: the bundle's manifest records which recipe made it.
    key = build_key(kind="apply-recipe", model=hash_module(model), teacher=hash_module(teacher) if teacher else None,
                    recipe=recipe.model_dump(mode="json", include={"name", "runtime", "format", "input", "compress", "budget"}),
                    data=hash_arrays(splits.train.x, splits.train.y, splits.calib.x, splits.test.x, splits.test.y),
                    name=name, signing_key=key_id())

    def produce(folder: Path) -> None:
        applied = _apply(recipe, model, splits, folder / "bundle", teacher, baseline_accuracy, name, progress)
        (folder / "applied.json").write_text(json.dumps(asdict(applied)))

    folder, hit = cached(key, produce)
    applied = AppliedRecipe(**json.loads((folder / "applied.json").read_text()))
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(folder / "bundle", out_dir)
    applied.bundle_path, applied.recipe, applied.from_cache = str(out_dir), recipe.name, hit
    return applied


def _apply(recipe: Recipe, model, splits: Splits, out_dir: Path, teacher, baseline_accuracy: float | None, name: str,
           progress: ProgressFn) -> AppliedRecipe:
    t0 = time.time()
    compressed, report, gate_passed = _compress(recipe, model, splits, teacher, progress)
    bundle = _package(recipe, compressed, splits, Path(out_dir), name, report)
    from kit.package import runner_for

    acc = accuracy(runner_for(bundle.model_file, recipe.threads), splits.test) if splits.test.y is not None else None
    applied = AppliedRecipe(recipe=recipe.name, bundle_path=str(bundle.path), model_sha256=bundle.manifest["model"]["sha256"],
                            size_bytes=int(bundle.manifest["model"]["size"]), accuracy=acc,
                            baseline_accuracy=baseline_accuracy, gate_passed=gate_passed, seconds=time.time() - t0,
                            report=report)
    if recipe.budget.top1_drop is not None and applied.top1_drop is not None:
        # The packaged artifact is what ships, so the gate is judged on it, not on the torch model.
        applied.gate_passed = applied.gate_passed and applied.top1_drop <= recipe.budget.top1_drop + 1e-9
    return applied
