"""`edgekit compress MODEL --recipe FILE --data DATA --out DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from kit.cli._ui import progress_bars, stdout


def _db(value) -> str:
    value = float(value)  # a JSON report may hold "inf" (identical outputs)
    return "inf" if value == float("inf") else f"{value:.1f}"


def task_overrides(task, postprocess) -> list[str]:
    """--task / --postprocess as recipe overrides (task.kind, task.postprocess); bad values are one line."""
    if task is None and postprocess is None:
        return []
    from kit.tasks.spec import POSTPROCESS, load_callable, parse_task

    parse_task(task, postprocess)
    if postprocess:
        load_callable(POSTPROCESS.get(postprocess, postprocess), "--postprocess")  # a bad spec fails before any work
    return [f"task.kind={task}", *([f"task.postprocess={postprocess}"] if postprocess else [])]


def budget_overrides(top1_drop, agreement, sqnr_db, metric, metric_drop) -> list[str]:
    """The --budget-* / --metric flags as recipe overrides (budget.<field>=value); a bad --metric
    spec (module missing, not callable) is one line naming it, before any work."""
    sets = [f"budget.{k}={v}" for k, v in (("top1_drop", top1_drop), ("agreement", agreement), ("sqnr_db", sqnr_db),
                                           ("metric_drop", metric_drop)) if v is not None]
    if metric is not None:
        from kit.compress.gate import load_metric
        from kit.errors import EdgeKitError

        load_metric(metric)
        if metric_drop is None:
            raise EdgeKitError(f"--metric {metric}: give --budget-metric-drop too (the largest drop allowed, in the "
                               "metric's own units; higher is better)")
        sets.append(f"budget.metric={metric}")
    return sets


def gate_lines(gate: dict) -> list[str]:
    """The gate's basis and each check with its unit, for the summary under the table."""
    lines = [f"gate:    basis {gate['basis']} ({'labelled data' if gate.get('labelled') else 'no labels'}, "
             f"{gate.get('samples')} inputs)"]
    for c in gate.get("checks") or []:
        limit = f"{100 * c['limit']:.2f}%" if c["unit"] == "share" else f"{c['limit']:g} {c['unit']}"
        value = f"{100 * float(c['value']):.2f}%" if c["unit"] == "share" else f"{float(c['value']):.4g} {c['unit']}"
        lines.append(f"  {'ok  ' if c['passed'] else 'FAIL'} {c['metric']}: {value} "
                     f"({'floor' if c['bound'] == 'min' else 'budget'} {limit}, from {c['field']})")
    return lines


def _table(title: str, report: dict):
    """Original, each step, the artifact: top-1, agreement, MACs, params, size."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("stage", "top-1", "agree", "SQNR dB", "MACs", "params", "size"):
        table.add_column(col, justify="left" if col == "stage" else "right")

    def row(label, m, size_text=""):
        table.add_row(label, "" if "top1" not in m else f"{100 * m['top1']:.2f}%",
                      f"{100 * m['agreement']['top1_match']:.1f}%" if "agreement" in m else "",
                      _db(m["agreement"]["sqnr_db"]) if "agreement" in m and m is not report["baseline"] else "",
                      "" if m.get("macs") is None else f"{m['macs'] / 1e6:.2f}M",
                      "" if m.get("param_count") is None else f"{m['param_count'] / 1e3:.1f}k", size_text)

    row("original", report["baseline"])
    for s in report["steps"]:
        row(f"{s['step']}: {s['method']}", s)
    a = report["artifact"]
    row(f"artifact {Path(a['file']).suffix}", a, f"{a['bytes'] / 1024:.0f} KiB (gzip {a['gzip_bytes'] / 1024:.0f})")
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    def compress(
        model: str = typer.Argument(..., help="torchvision:NAME, package.module:callable, 'teacher', or a checkpoint file."),
        recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name or YAML file (its compress chain and budget)."),
        data: str = typer.Option("digits", "--data", help="'digits' (bundled), an .npz file or an image folder."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for the bundle, model.pt and report.json."),
        weights: Optional[Path] = typer.Option(None, "--weights", help="A state_dict file for MODEL."),
        teacher: Optional[str] = typer.Option(None, "--teacher", help="Teacher for distill steps (default: MODEL itself)."),
        teacher_weights: Optional[Path] = typer.Option(None, "--teacher-weights", help="A state_dict file for --teacher."),
        set_: List[str] = typer.Option([], "--set", help="Override a recipe field: key=value (e.g. compress.0.ratio=0.3)."),
        image_size: Optional[int] = typer.Option(None, "--image-size", help="Input size: sets input.image_size and loads the data at it (default: the recipe's)."),
        preprocess: Optional[str] = typer.Option(None, "--preprocess", help="Normalisation preset: imagenet | inception | none (default: the recipe's; imagenet for torchvision:NAME)."),
        mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean, e.g. 0.485,0.456,0.406 (with --std; wins over --preprocess)."),
        std: Optional[str] = typer.Option(None, "--std", help="Per-channel std, e.g. 0.229,0.224,0.225."),
        resize: Optional[str] = typer.Option(None, "--resize", help="resize (plain, to size x size) | shorter_crop (shorter side to size/crop-fraction, centre crop)."),
        crop_fraction: Optional[float] = typer.Option(None, "--crop-fraction", help="shorter_crop: the crop's share of the resized side (default 0.875)."),
        channel_order: Optional[str] = typer.Option(None, "--channel-order", help="rgb | bgr (default rgb)."),
        eval_samples: Optional[int] = typer.Option(None, "--eval-samples", min=1, help="Evaluate on the first N test samples."),
        budget_top1_drop: Optional[float] = typer.Option(None, "--budget-top1-drop", min=0.0, max=100.0,
                                                         help="Max top-1 drop, percentage points (labelled data); sets budget.top1_drop."),
        budget_agreement: Optional[float] = typer.Option(None, "--budget-agreement", min=0.0, max=1.0,
                                                         help="Floor on agreement with the original: share 0..1 of inputs whose top-1 is unchanged (e.g. 0.90); sets budget.agreement."),
        budget_sqnr_db: Optional[float] = typer.Option(None, "--budget-sqnr-db",
                                                       help="Floor on the output SQNR vs the original, dB (e.g. 18); sets budget.sqnr_db."),
        metric: Optional[str] = typer.Option(None, "--metric", help="User metric pkg.module:fn(outputs, labels) -> float, higher is better; replaces top-1 (with --budget-metric-drop)."),
        budget_metric_drop: Optional[float] = typer.Option(None, "--budget-metric-drop", min=0.0,
                                                           help="Max drop of --metric vs the original, in the metric's own units."),
        override_budget: bool = typer.Option(False, "--override-budget", help="Package even if the accuracy budget is exceeded."),
        task: Optional[str] = typer.Option(None, "--task", help="classification | segmentation | detection: sets task.kind; its metric (top-1 / mIoU / mAP@0.5) becomes the budget (kit.tasks)."),
        postprocess: Optional[str] = typer.Option(None, "--postprocess", help="The task's postprocess, pkg.module:fn (e.g. kit.tasks.detect:postprocess); sets task.postprocess."),
        name: str = typer.Option("model", "--name", help="Model name recorded in the bundle."),
        cache: bool = typer.Option(True, "--cache/--no-cache", help="Reuse an identical earlier run (same model, recipe, data, key)."),
    ):
        """Compress MODEL with a recipe's chain, gate it on the accuracy budget, package it, write report.json."""
        from kit.cli._ui import console
        from kit.data import load_data
        from kit.errors import EdgeKitError
        from kit.preprocess import cli_spec, resolve
        from kit.recipes import load_recipe

        sizes = [s for s in set_ if s.split("=", 1)[0].strip() == "input.image_size"]
        if image_size is not None and sizes and sizes[-1].split("=", 1)[1].strip() != str(image_size):
            raise EdgeKitError(f"--image-size {image_size} and --set {sizes[-1]} disagree; give one of them")
        set_ = [*set_, *budget_overrides(budget_top1_drop, budget_agreement, budget_sqnr_db, metric, budget_metric_drop),
                *task_overrides(task, postprocess)]
        rec = load_recipe(recipe, [*set_, f"input.image_size={image_size}"] if image_size is not None else set_)
        pre, source = resolve(cli_spec(preprocess, mean, std, resize, crop_fraction, channel_order),
                              rec.input.preprocessing(), model)
        rec = rec.with_preprocess(pre)
        size = rec.input.image_size or 32
        net = None
        if model.lower().endswith(".onnx"):  # a user's own .onnx: inputs and shapes from its graph
            from kit.onnx_model import open_onnx

            net, splits = open_onnx(model, rec, data, pre, out, weights=weights,
                                    note=lambda line: console.print(line, highlight=False, soft_wrap=True))
        elif rec.task is not None and rec.task.kind != "classification":  # COCO / YOLO / mask folders (kit.tasks.data)
            from kit.tasks.data import load_task_data

            rec.task.params.setdefault("image_size", size)  # the detector's boxes are scaled to pixels by it
            splits = load_task_data(rec.task.kind, data, size, preprocess=pre)
        else:
            splits = load_data(data, size, preprocess=pre, channels=rec.input.channels)
        console.print(f"preprocess: {pre.label} ({source})", highlight=False)

        from kit.models import load_model, load_teacher
        from kit.pipeline.build import compress_job

        net = load_model(model, weights) if net is None else net
        with progress_bars() as (progress, step):
            step(f"compress {model} with {rec.name}: {' -> '.join(s.method for s in rec.steps) or '(no steps)'}")
            outcome = compress_job(net, rec, splits, out, teacher=load_teacher(teacher, teacher_weights),
                                   override_budget=override_budget, name=name, progress=progress, eval_samples=eval_samples,
                                   cache=cache)
        stdout.print(_table(f"edgekit compress: {rec.name}", outcome.report))
        stdout.print(outcome.report["artifact_gate"]["message"] + (" (overridden)" if not outcome.gate_passed else ""),
                     soft_wrap=True, highlight=False)
        for line in gate_lines(outcome.report["artifact_gate"]):
            stdout.print(line, soft_wrap=True, highlight=False)
        stdout.print(f"input:   {pre.label} preprocessing, {source}", highlight=False)
        stdout.print(f"bundle:  {outcome.bundle_path}")
        stdout.print(f"report:  {outcome.report_path}")
