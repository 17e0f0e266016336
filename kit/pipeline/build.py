"""Build: compress -> package -> evaluate the packaged artifact on its runtime -> gate, with one
build cache. `edgekit compress` is `compress_job`; a recipe search builds with `apply_recipe`.

The chain's gate (the float/torch result) refuses early, before minutes of export; the packaged
artifact is then judged once more, since export and lowering can change numerics and what ships
is what is judged. Over budget, nothing is kept (the bundle just built is removed) unless
`override_budget`; report.json is written either way so the user sees why. The cache holds the
bundle, model.pt and report.json of a packaged build; the artifact gate is judged after it.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from kit.compress.gate import judge, refuse_if_over
from kit.data import Splits
from kit.errors import EdgeKitError
from kit.progress import ProgressFn
from kit.recipes.schema import Recipe

_CACHED = ("bundle", "model.pt", "report.json")


@dataclass
class Build:
    """One build's outcome: where it went (out_dir, bundle, checkpoint, report.json), the report,
    and the figures a search ranks by."""

    out_dir: Path
    report_path: Path | None
    bundle_path: Path | str | None
    checkpoint_path: Path | None
    gate_passed: bool
    report: dict = field(default_factory=dict)
    recipe: str = ""
    model_sha256: str = ""
    size_bytes: int = 0
    accuracy: float | None = None  # top-1 of the packaged artifact (None on unlabelled data)
    baseline_accuracy: float | None = None
    seconds: float = 0.0
    from_cache: bool = False

    @property
    def top1_drop(self) -> float | None:
        """Points of top-1 lost against the original model."""
        if self.accuracy is None or self.baseline_accuracy is None:
            return None
        return 100.0 * (self.baseline_accuracy - self.accuracy)


def check_input(recipe: Recipe, splits: Splits, model=None) -> None:
    """The data against the recipe's input (channels, image_size, preprocess) and the model's first
    convolution; one line naming the field or flag to change. Several inputs: the first one's,
    when it is an N x C x H x W image."""
    if splits.train.multi_input:
        if splits.train.x[0].ndim != 4:
            return
        splits = replace(splits, train=replace(splits.train, x=splits.train.x[0]))
    channels = splits.train.x.shape[1]
    if recipe.input.channels is not None and recipe.input.channels != channels:
        raise EdgeKitError(f"recipe {recipe.name} ({recipe.source}): input.channels={recipe.input.channels} but data "
                           f"{splits.name!r} has {channels}; use --set input.channels={channels}")
    size = splits.train.x.shape[-1]
    if recipe.input.image_size is not None and recipe.input.image_size != size:
        raise EdgeKitError(f"recipe {recipe.name}: input.image_size={recipe.input.image_size} but the data was loaded at "
                           f"{size}; use --image-size {size} (or load it with image_size={recipe.input.image_size})")
    wanted = recipe.input.preprocessing()
    if wanted is not None and not wanted.same_as(splits.preprocess):
        raise EdgeKitError(f"recipe {recipe.name}: input.preprocess is {wanted.preset or wanted.to_dict()} but data "
                           f"{splits.name!r} was loaded with {_label(splits.preprocess)}; load it with "
                           f"kit.data.load_data(..., preprocess=recipe.input.preprocessing())")
    first = _first_conv(model)
    if first is not None and first[1] != channels:
        raise EdgeKitError(f"model: its first convolution ({first[0]}) takes {first[1]} channel(s) but data "
                           f"{splits.name!r} has {channels}; give {first[1]}-channel data or a model for {channels}")


def _label(pre) -> str:
    return "no preprocessing" if pre is None else (pre.preset or str(pre.to_dict()))  # values, not "custom"


def _first_conv(model) -> tuple[str, int] | None:
    """(name, in_channels) of the first registered Conv2d when no Linear comes before it."""
    if not hasattr(model, "named_modules"):
        return None
    from torch import nn

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            return name, int(mod.in_channels)
        if isinstance(mod, (nn.Linear, nn.Embedding, nn.MultiheadAttention)):
            return None
    return None


def manifest_preprocessing(recipe: Recipe, splits: Splits) -> dict:
    """The bundle manifest's `preprocessing`: what the data loader applied (else the recipe's)."""
    from kit.preprocess import Preprocess

    pre = splits.preprocess or recipe.input.preprocessing() or Preprocess()
    first = splits.test.x[0] if splits.test.multi_input else splits.test.x  # several inputs: the first one's
    return pre.manifest(first[:1].shape, splits.name)


def json_safe(obj):
    """A report with non-finite floats (an SQNR of inf for identical outputs) as strings: the signed
    manifest is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def _cache_key(recipe: Recipe, model, splits: Splits, teacher, **options) -> str:
    from kit.cache import build_key, hash_arrays, hash_module
    from kit.compress.ort_quant import host_has_vnni
    from kit.io import as_tuple
    from kit.package.signing import key_id

    return build_key(kind="compress-job", model=hash_module(model), teacher=hash_module(teacher) if teacher else None,
                     recipe=recipe.model_dump(mode="json", exclude={"source", "description"}),
                     data=hash_arrays(*as_tuple(splits.train.x), splits.train.y, *as_tuple(splits.calib.x),
                                      *as_tuple(splits.test.x), splits.test.y),
                     signing_key=key_id(), host_vnni=host_has_vnni(), **options)


def _compress_and_package(recipe: Recipe, model, splits: Splits, out_dir: Path, *, teacher, override_budget: bool,
                          name: str, progress: ProgressFn, eval_samples: int | None) -> dict:
    """Run the chain (refusing over budget), package its result, evaluate the artifact; the report."""
    import torch
    from torch import nn

    from kit.compress.chain import run_chain
    from kit.evaluate import evaluate_artifact
    from kit.package import package, runner_for

    t0 = time.time()
    work = out_dir / "work"
    try:
        result = run_chain(model, recipe.steps, splits, budget=recipe.budget, teacher=teacher,
                           runtime=recipe.runtime, progress=progress, workdir=work, eval_samples=eval_samples,
                           **({"task": recipe.task} if recipe.task else {}))
        preprocessing = manifest_preprocessing(recipe, splits)
        report = {"recipe": recipe.summary(), "name": name, "preprocessing": preprocessing, **result.report,
                  "override_budget": override_budget}
        if not result.gate_passed and not override_budget:
            report.update(refused=True, bundle=None)
            _write_json(out_dir / "report.json", report)
            refuse_if_over(result.gate, False, f"{name} compressed with {recipe.name}")
        checkpoint = None
        if isinstance(result.model, nn.Module):
            checkpoint = out_dir / "model.pt"  # the compressed float model, for further work in torch
            torch.save(result.model, checkpoint)
        compact = {"steps": [{"method": s["method"], "params": s["params"]} for s in report["steps"]],
                   "gate": report["gate"]}  # the manifest gets methods and parameters, not per-layer tables
        # The reference input is the first test sample as the loader preprocessed it (resized,
        # normalised): the agent's reference check runs the model on exactly what it is fed.
        bundle = package(result.model, recipe.format if recipe.format == "ort" else recipe.target, out_dir / "bundle",
                         splits.test.head(1).x, name=name, recipe=recipe.summary(), compression=compact,
                         preprocessing=preprocessing,
                         **({"extra": {"task": recipe.task.manifest(recipe.budget.metric, report)}} if recipe.task else {}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    runner, seen = runner_for(bundle.model_file, recipe.threads), []
    recording = (lambda x: seen.append(runner(x)) or seen[-1]) if recipe.budget.metric else runner
    from kit.splits import class_labels

    judged = result.eval_data if result.eval_data.y is None or class_labels(result.eval_data.y) else \
        replace(result.eval_data, y=None)  # masks / boxes: no top-1, the task metric below judges them
    report["artifact"] = evaluate_artifact(bundle.model_file, recording, result.reference, judged,
                                           bundle.manifest.get("delegation"))
    if recipe.budget.metric:  # the user metric on the artifact's own outputs
        import numpy as np

        from kit.compress.gate import run_metric

        report["artifact"]["metric"] = {"name": recipe.budget.metric, "value": run_metric(
            recipe.budget.metric, np.concatenate([np.asarray(o) for o in seen]), result.eval_data.y,
            reference=result.reference, task=recipe.task)}
    report.update(bundle=str(bundle.path), checkpoint=str(checkpoint) if checkpoint else None,
                  seconds=round(time.time() - t0, 1))
    _write_json(out_dir / "report.json", report)
    return report


def build(recipe: Recipe, model, splits: Splits, out_dir: str | Path, *, teacher=None, override_budget: bool = False,
          name: str = "model", progress: ProgressFn = None, eval_samples: int | None = None, cache: bool = True,
          baseline_top1: float | None = None) -> Build:
    """Compress `model` as `recipe` says, package it into `out_dir`/bundle, judge the artifact.

    `cache`: reuse an identical earlier build (kit.cache: the key covers the model's weights, the
    teacher, the recipe, the data, the options and the signing key). `baseline_top1`: the original's
    top-1 the artifact gate compares with (default: measured on the same evaluation samples).
    A kit.onnx_model.OnnxModel (a user's .onnx file) is built by kit.pipeline.build_onnx.
    """
    from kit.onnx_model import OnnxModel

    if isinstance(model, OnnxModel):
        from kit.pipeline.build_onnx import build_onnx

        return Build(**build_onnx(recipe, model, splits, out_dir, override_budget=override_budget, name=name,
                                  progress=progress, eval_samples=eval_samples, cache=cache, baseline_top1=baseline_top1))
    check_input(recipe, splits, model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "report.json"
    key = _cache_key(recipe, model, splits, teacher, name=name, override_budget=override_budget,
                     eval_samples=eval_samples) if cache else None
    from kit import cache as build_cache

    if key is not None and build_cache.restore(key, out_dir, _CACHED):
        report = json.loads(report_path.read_text())
        report["from_cache"] = True
    else:
        report = _compress_and_package(recipe, model, splits, out_dir, teacher=teacher, override_budget=override_budget,
                                       name=name, progress=progress, eval_samples=eval_samples)
        if key is not None:
            build_cache.save(key, out_dir, _CACHED)
    bundle = out_dir / "bundle"
    checkpoint = out_dir / "model.pt" if (out_dir / "model.pt").is_file() else None
    gate = judge(report["baseline"], report["artifact"], recipe.budget, baseline_top1, samples=report.get("eval_samples"))
    report.update(artifact_gate=gate.to_dict(), bundle=str(bundle),
                  checkpoint=str(checkpoint) if checkpoint else None)
    if not gate.passed and not override_budget:
        shutil.rmtree(bundle, ignore_errors=True)
        report.update(refused=True, bundle=None)
        _write_json(report_path, report)
        refuse_if_over(gate, False, f"packaged {name} ({Path(report['artifact']['file']).suffix})")
    report["refused"] = False
    _write_json(report_path, report)
    model_info = json.loads((bundle / "manifest.json").read_text())["model"]
    return Build(out_dir=out_dir, report_path=report_path, bundle_path=bundle, checkpoint_path=checkpoint,
                 gate_passed=bool(gate.passed and report["gate"]["passed"]), report=report, recipe=recipe.name,
                 model_sha256=model_info["sha256"], size_bytes=int(model_info["size"]),
                 accuracy=report["artifact"].get("top1"), baseline_accuracy=report["baseline"].get("top1"),
                 seconds=report.get("seconds", 0.0), from_cache=bool(report.get("from_cache")))


def compress_job(model, recipe: Recipe, splits: Splits, out_dir: str | Path, *, teacher=None,
                 override_budget: bool = False, name: str = "model", progress: ProgressFn = None,
                 eval_samples: int | None = None, cache: bool = True) -> Build:
    """`edgekit compress` as a library call: `build` with the model first (out_dir gets bundle/,
    model.pt when the result is a float module, report.json)."""
    return build(recipe, model, splits, out_dir, teacher=teacher, override_budget=override_budget, name=name,
                 progress=progress, eval_samples=eval_samples, cache=cache)


def apply_recipe(recipe: Recipe, model, splits: Splits, out_dir: str | Path, *, teacher=None,
                 baseline_accuracy: float | None = None, name: str = "model", cache: bool = False,
                 progress: ProgressFn = None) -> Build:
    """Compress `model` as `recipe` says and package it into `out_dir` (the bundle folder itself).

    This is `build` with the budget reported rather than enforced, since a search wants
    over-budget candidates on its front too; `baseline_accuracy` (the original's top-1, when the
    caller measured it) is what the artifact's drop is judged against. The report is JSON-safe.
    """
    out_dir = Path(out_dir)
    t0 = time.time()
    work = out_dir.with_name(out_dir.name + ".job")
    shutil.rmtree(work, ignore_errors=True)
    built = build(recipe, model, splits, work, teacher=teacher, override_budget=True, name=name, progress=progress,
                  cache=cache, baseline_top1=baseline_accuracy)
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.move(str(built.bundle_path), str(out_dir))
    shutil.rmtree(work, ignore_errors=True)
    return replace(built, out_dir=out_dir, report_path=None, bundle_path=str(out_dir), checkpoint_path=None,
                   report=json_safe(built.report), seconds=time.time() - t0,
                   baseline_accuracy=built.baseline_accuracy if baseline_accuracy is None else baseline_accuracy)
