"""Build for a user's own .onnx file: (pin dynamic dims) -> ORT int8 (or as is) -> package ->
evaluate the packaged artifact on ORT -> gate, with the same cache, report.json and refusal as
kit.pipeline.build (which dispatches here when the model is a kit.onnx_model.OnnxModel).

The ORT static int8 step is the PyTorch path's own machinery (kit.compress.ort_quant:
preprocessing, sensitivity scan for keep_float, auto calibration of kit.compress.ort_calibration),
with the weight/bias correction done on the graph (kit.compress.onnx_correction) instead of in
torch. The fp32 model the gate compares with is the user's file itself (batch pinned to 1), run
by ORT. A recipe for ExecuTorch, or a step that changes torch weights (prune, distill, lowrank,
cluster, PT2E int8, QAT), is refused with one line: those need the PyTorch model.

With a recipe `task` (`--task detection|segmentation [--postprocess pkg.mod:fn]`) the gate judges
the task's metric as the PyTorch path does (kit.tasks.spec fills budget.metric; kit.compress.gate.
run_metric gets the task and the fp32 outputs; no top-1 on masks / boxes) and the manifest records
the task (Task.manifest).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

from kit.compress.gate import judge, refuse_if_over, run_metric
from kit.data import Dataset, Splits
from kit.errors import EdgeKitError
from kit.onnx_model import PINNED, OnnxModel, check_input, check_recipe, check_supported, pin_dims
from kit.progress import ProgressFn, report
from kit.recipes.schema import Recipe
from kit.splits import class_labels

_CACHED = ("bundle", "report.json")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def _subset(data: Dataset, n: int | None) -> Dataset:
    return data if n is None or len(data) <= n else Dataset(data.x[:n], None if data.y is None else data.y[:n])


def _judged(data: Dataset) -> Dataset:
    """`data` as top-1 sees it: masks / detection targets (kit.splits.class_labels) dropped, since
    the task's metric judges those (as kit.pipeline.build does)."""
    return data if data.y is None or class_labels(data.y) else dataclasses.replace(data, y=None)


def _measure(path: Path, ref: np.ndarray | None, data: Dataset, metric: str | None, task=None) -> tuple[dict, np.ndarray]:
    """Agreement with `ref` (None: the fp32 file itself), top-1 on class labels, and the metric
    (a task's against its labels, or against `ref`'s outputs when unlabelled)."""
    from kit.evaluate import agreement, file_size, gzip_size, outputs, top1
    from kit.package.onnx import OrtRunner

    out = outputs(OrtRunner(path), data, 1)
    result = {"agreement": agreement(out if ref is None else ref, out).to_dict(),
              "size": {"onnx_bytes": file_size(path), "onnx_gzip_bytes": gzip_size(path)}}
    if class_labels(data.y):
        result["top1"] = round(top1(out, data.y), 4)
    if metric:
        result["metric"] = {"name": metric, "value": run_metric(metric, out, data.y, reference=out if ref is None else ref,
                                                                task=task)}
    return result, out


def _quantize(cfg, fp32: Path, splits: Splits, eval_data: Dataset, work: Path, progress: ProgressFn):
    """One ORT int8 step on the file: (graph weight/bias correction) then ort_quant's own quantizer."""
    from kit.compress.base import StepContext
    from kit.compress.int8_share import artifact_share
    from kit.compress.ort_quant import OrtInt8Static, preprocess

    ctx = StepContext(splits=splits, example=None, eval_data=_judged(eval_data), original=None, workdir=work,
                      progress=progress)
    info: dict = {}
    source = fp32
    if isinstance(cfg, OrtInt8Static) and cfg.bias_correction:
        if not cfg.per_channel:
            info["weight_correction"] = "skipped: per-tensor weights"
        else:
            from kit.compress.onnx_correction import correct_onnx

            pre = preprocess(fp32, work / "model-fp32-pre.onnx")
            source = work / "model-fp32-corrected.onnx"
            info["weight_correction"] = correct_onnx(pre, splits.calib, source, max_samples=cfg.correction_samples,
                                                     progress=progress, qmax=cfg.weight_qmax())
    applied, more = cfg._quantize_file(source, ctx)  # ort_quant's own path: preprocess, auto calibration
    info.update(more)
    info.update(artifact_share(work / "model-int8.onnx"))
    return work / "model-int8.onnx", applied, info


def _cache_key(recipe: Recipe, model: OnnxModel, splits: Splits, **options) -> str:
    from kit.cache import build_key, hash_arrays
    from kit.compress.ort_quant import host_has_vnni
    from kit.package.signing import key_id

    return build_key(kind="compress-onnx", model=model.sha256, shapes=model.inputs,
                     recipe=recipe.model_dump(mode="json", exclude={"source", "description"}),
                     data=hash_arrays(splits.calib.x, splits.test.x, splits.test.y), signing_key=key_id(),
                     host_vnni=host_has_vnni(), **options)  # reduce_range auto follows the host's CPU


def _compress_and_package(recipe: Recipe, model: OnnxModel, splits: Splits, out_dir: Path, *, override_budget: bool,
                          name: str, progress: ProgressFn, eval_samples: int | None) -> dict:
    from kit.evaluate import evaluate_artifact, file_size
    from kit.package import package, runner_for
    from kit.preprocess import Preprocess

    t0 = time.time()
    work = out_dir / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    metric, task = recipe.budget.metric, recipe.task  # with a task, budget.metric is its metric (kit.tasks.spec)
    try:
        fp32 = work / "model-fp32.onnx"
        from kit.package.onnx import self_contained_onnx

        self_contained_onnx(model.path, fp32)  # external data folded in (and screened)
        eval_data = _subset(splits.test, eval_samples)
        baseline, ref = _measure(fp32, None, eval_data, metric, task)
        steps, current = [], fp32
        for i, cfg in enumerate(recipe.steps):
            s0 = time.time()
            current, applied, info = _quantize(cfg, fp32, splits, eval_data, work, progress)
            measured, _ = _measure(current, ref, eval_data, metric, task)
            info["fp32_onnx_bytes"] = file_size(fp32)
            steps.append({"step": i, "method": cfg.method, "params": applied.params(),
                          "seconds": round(time.time() - s0, 2), "info": info, **measured})
            report(progress, "compress", i + 1, len(recipe.steps))
        gate = judge(baseline, steps[-1] if steps else baseline, recipe.budget, samples=len(eval_data))
        pre = splits.preprocess or recipe.input.preprocessing() or Preprocess()  # as build.manifest_preprocessing
        preprocessing = pre.manifest(splits.test.x[:1].shape, splits.name)
        source = {"onnx": str(model.source or model.path), "sha256": model.sha256, "inputs": model.inputs, "outputs": model.outputs,
                  "notes": model.notes}
        report_doc = {"recipe": recipe.summary(), "name": name, "preprocessing": preprocessing, "source": source,
                      "runtime": recipe.runtime, "input_shape": [1, *splits.test.x.shape[1:]], "data": splits.name,
                      "eval_samples": len(eval_data), "baseline": baseline, "steps": steps, "gate": gate.to_dict(),
                      "notes": model.notes, "override_budget": override_budget}
        if not gate.passed and not override_budget:
            report_doc.update(refused=True, bundle=None)
            _write_json(out_dir / "report.json", report_doc)
            refuse_if_over(gate, False, f"{name} ({Path(model.source or model.path).name}) compressed with {recipe.name}")
        compact = {"steps": [{"method": s["method"], "params": s["params"]} for s in steps], "gate": report_doc["gate"],
                   "source_onnx": {"file": Path(model.path).name, "sha256": model.sha256, "notes": model.notes}}
        bundle = package(current, "ort" if recipe.format == "ort" else "onnx", out_dir / "bundle", splits.test.x[:1],
                         name=name, recipe=recipe.summary(), compression=compact, preprocessing=preprocessing,
                         progress=progress, **({"extra": {"task": task.manifest(metric, report_doc)}} if task else {}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seen: list = []
    runner = runner_for(bundle.model_file, recipe.threads)
    recording = (lambda x: seen.append(runner(x)) or seen[-1]) if metric else runner
    report_doc["artifact"] = evaluate_artifact(bundle.model_file, recording, ref, _judged(eval_data), None)
    if metric:
        report_doc["artifact"]["metric"] = {"name": metric, "value": run_metric(
            metric, np.concatenate([np.asarray(o) for o in seen]), eval_data.y, reference=ref, task=task)}
    report_doc.update(bundle=str(bundle.path), checkpoint=None, seconds=round(time.time() - t0, 1))
    _write_json(out_dir / "report.json", report_doc)
    return report_doc


def build_onnx(recipe: Recipe, model: OnnxModel, splits: Splits, out_dir: str | Path, *, override_budget: bool = False,
               name: str = "model", progress: ProgressFn = None, eval_samples: int | None = None, cache: bool = True,
               baseline_top1: float | None = None) -> dict:
    """Compress the user's .onnx `model` as `recipe` says, package it into `out_dir`/bundle, judge
    the artifact on ORT. Returns the fields of a kit.pipeline.build.Build: call
    `kit.pipeline.build.build` (or compress_job) with the OnnxModel to get the Build itself (this
    module may not import build.py, which dispatches here). Dynamic dims are pinned first
    (pin_dims, with the recipe's input.image_size / input.channels), the notes go to report.json."""
    from kit import cache as build_cache

    check_recipe(recipe, model)
    check_supported(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _build(recipe, model, splits, out_dir, override_budget=override_budget, name=name, progress=progress,
                      eval_samples=eval_samples, cache=cache, baseline_top1=baseline_top1)
    finally:
        (out_dir / PINNED).unlink(missing_ok=True)


def _build(recipe: Recipe, model: OnnxModel, splits: Splits, out_dir: Path, *, override_budget: bool, name: str,
           progress: ProgressFn, eval_samples: int | None, cache: bool, baseline_top1: float | None) -> dict:
    from kit import cache as build_cache

    if model.dynamic:
        model = pin_dims(model, out_dir / PINNED, recipe.input.image_size, recipe.input.channels)
    check_input(model, splits.test.x, f"data {splits.name!r}")
    report_path = out_dir / "report.json"
    key = _cache_key(recipe, model, splits, name=name, override_budget=override_budget,
                     eval_samples=eval_samples) if cache else None
    if key is not None and build_cache.restore(key, out_dir, _CACHED):
        doc = json.loads(report_path.read_text())
        doc["from_cache"] = True
    else:
        doc = _compress_and_package(recipe, model, splits, out_dir, override_budget=override_budget, name=name,
                                    progress=progress, eval_samples=eval_samples)
        if key is not None:
            build_cache.save(key, out_dir, _CACHED)
    bundle = out_dir / "bundle"
    gate = judge(doc["baseline"], doc["artifact"], recipe.budget, baseline_top1, samples=doc.get("eval_samples"))
    doc.update(artifact_gate=gate.to_dict(), bundle=str(bundle), checkpoint=None)
    if not gate.passed and not override_budget:
        shutil.rmtree(bundle, ignore_errors=True)
        doc.update(refused=True, bundle=None)
        _write_json(report_path, doc)
        refuse_if_over(gate, False, f"packaged {name} ({Path(doc['artifact']['file']).suffix})")
    doc["refused"] = False
    _write_json(report_path, doc)
    info = json.loads((bundle / "manifest.json").read_text())["model"]
    return dict(out_dir=out_dir, report_path=report_path, bundle_path=bundle, checkpoint_path=None,
                gate_passed=bool(gate.passed and doc["gate"]["passed"]), report=doc, recipe=recipe.name,
                model_sha256=info["sha256"], size_bytes=int(info["size"]), accuracy=doc["artifact"].get("top1"),
                baseline_accuracy=doc["baseline"].get("top1"), seconds=doc.get("seconds", 0.0),
                from_cache=bool(doc.get("from_cache")))
