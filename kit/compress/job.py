"""`edgekit compress` as a library call: recipe chain -> gate -> package -> measure the packaged
artifact on its real runtime -> gate again (what ships is what is judged) -> report.json.

Over budget, nothing is packaged (or the bundle just built is removed) unless `override_budget`;
the report is written either way so the user sees why.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from kit.compress.chain import run_chain
from kit.compress.gate import check, refuse_if_over
from kit.data import Splits
from kit.errors import EdgeKitError
from kit.evaluate import agreement, file_size, gzip_size, outputs, top1
from kit.progress import ProgressFn


@dataclass
class CompressOutcome:
    out_dir: Path
    report_path: Path
    bundle_path: Path | None
    checkpoint_path: Path | None
    gate_passed: bool
    report: dict


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def _compact(chain_report: dict) -> dict:
    """What goes into the bundle manifest: methods and parameters, not the per-layer tables."""
    return {"steps": [{"method": s["method"], "params": s["params"]} for s in chain_report["steps"]],
            "gate": chain_report["gate"]}


def compress_job(model: nn.Module, recipe, splits: Splits, out_dir: str | Path, *, teacher: nn.Module | None = None,
                 override_budget: bool = False, name: str = "model", progress: ProgressFn = None,
                 eval_samples: int | None = None, cache: bool = True) -> CompressOutcome:
    """Run the job, or, with `cache`, copy the result of an identical earlier run (kit.cache: the key
    covers the model's weights, the teacher, the recipe, the data, the options and the signing key)."""
    if not cache:
        return _compress_job(model, recipe, splits, out_dir, teacher=teacher, override_budget=override_budget,
                             name=name, progress=progress, eval_samples=eval_samples)
    from kit.cache import build_key, cached, hash_arrays, hash_module, lookup
    from kit.package.signing import key_id

    key = build_key(kind="compress-job", model=hash_module(model), teacher=hash_module(teacher) if teacher else None,
                    recipe=recipe.model_dump(mode="json", exclude={"source", "description"}),
                    data=hash_arrays(splits.train.x, splits.train.y, splits.calib.x, splits.test.x, splits.test.y),
                    name=name, override_budget=override_budget, eval_samples=eval_samples, signing_key=key_id())
    out_dir = Path(out_dir)
    hit = lookup(key)
    if hit is None:
        outcome = _compress_job(model, recipe, splits, out_dir, teacher=teacher, override_budget=override_budget,
                                name=name, progress=progress, eval_samples=eval_samples)
        cached(key, lambda folder: shutil.copytree(out_dir, folder, dirs_exist_ok=True))
        return outcome
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in ("bundle", "model.pt", "report.json"):
        src, dst = hit / item, out_dir / item
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
        elif src.is_file():
            shutil.copyfile(src, dst)
    report = json.loads((out_dir / "report.json").read_text())
    bundle = out_dir / "bundle" if (out_dir / "bundle").is_dir() else None
    checkpoint = out_dir / "model.pt" if (out_dir / "model.pt").is_file() else None
    report.update(bundle=str(bundle) if bundle else None, checkpoint=str(checkpoint) if checkpoint else None, from_cache=True)
    _write_json(out_dir / "report.json", report)
    return CompressOutcome(out_dir, out_dir / "report.json", bundle, checkpoint, not report.get("refused", False), report)


def _compress_job(model: nn.Module, recipe, splits: Splits, out_dir: str | Path, *, teacher: nn.Module | None = None,
                  override_budget: bool = False, name: str = "model", progress: ProgressFn = None,
                  eval_samples: int | None = None) -> CompressOutcome:
    from kit.package import package, runner_for
    from kit.recipes.apply import check_input

    check_input(recipe, splits)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "report.json"
    t0 = time.time()
    result = run_chain(model, [dict(s) for s in recipe.compress], splits, budget_top1_drop=recipe.budget.top1_drop,
                       teacher=teacher, runtime=recipe.runtime, progress=progress, workdir=out_dir / "work",
                       eval_samples=eval_samples)
    report = {"recipe": recipe.summary(), "name": name, **result.report, "override_budget": override_budget}
    if not result.gate_passed and not override_budget:
        report.update(refused=True, bundle=None)
        _write_json(report_path, report)
        shutil.rmtree(out_dir / "work", ignore_errors=True)
        refuse_if_over(result.gate, False, f"{name} compressed with {recipe.name}")

    checkpoint = None
    if isinstance(result.model, nn.Module):
        checkpoint = out_dir / "model.pt"  # the compressed float model, for further work in torch
        torch.save(result.model, checkpoint)
    target = recipe.format if recipe.format == "ort" else recipe.target
    bundle_dir = out_dir / "bundle"
    bundle = package(result.model, target, bundle_dir, splits.test.x[:1], name=name, recipe=recipe.summary(),
                     compression=_compact(result.report))
    shutil.rmtree(out_dir / "work", ignore_errors=True)

    # Judge the artifact itself on its runtime: export and lowering can change numerics.
    data = splits.test if eval_samples is None else splits.test.__class__(splits.test.x[:eval_samples],
                                                                          None if splits.test.y is None else splits.test.y[:eval_samples])
    ref = outputs(lambda x: model.eval()(torch.from_numpy(x)).detach().numpy(), data, 64)
    out = outputs(runner_for(bundle.model_file, recipe.threads), data, 1)
    artifact = {"file": str(bundle.model_file), "bytes": file_size(bundle.model_file), "gzip_bytes": gzip_size(bundle.model_file),
                "agreement": agreement(ref, out).to_dict(), "delegation": bundle.manifest.get("delegation")}
    if data.y is not None:
        artifact["top1"] = round(top1(out, data.y), 4)
        gate = check(result.baseline["top1"], artifact["top1"], recipe.budget.top1_drop, "top1")
    else:
        gate = check(1.0, artifact["agreement"]["top1_match"], recipe.budget.top1_drop, "agreement")
    report.update(artifact=artifact, artifact_gate={**gate.to_dict(), "message": gate.message},
                  bundle=str(bundle.path), checkpoint=str(checkpoint) if checkpoint else None,
                  seconds=round(time.time() - t0, 1))
    if not gate.passed and not override_budget:
        shutil.rmtree(bundle.path, ignore_errors=True)
        report.update(refused=True, bundle=None)
        _write_json(report_path, report)
        refuse_if_over(gate, False, f"packaged {name} ({bundle.model_file.suffix})")
    report["refused"] = False
    _write_json(report_path, report)
    return CompressOutcome(out_dir, report_path, bundle.path, checkpoint, gate.passed, report)


def load_teacher(spec: str | None, weights: str | None = None) -> nn.Module | None:
    if not spec:
        return None
    from kit.models import load_model

    try:
        return load_model(spec, weights)
    except EdgeKitError as e:
        raise EdgeKitError(f"--teacher: {e}") from e
