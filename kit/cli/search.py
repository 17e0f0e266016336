"""`edgekit search` (recipes on a device) and `edgekit student-search` (MobileNet students for a
device): parse, call kit.search, render the front."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from kit.cli._ui import console, print_json, progress_bars, stdout
from kit.errors import EdgeKitError


def _fmt(value, spec: str = ".3f", scale: float = 1.0) -> str:
    return "" if value is None else format(value * scale, spec)


def _model_name(spec: str) -> str:
    """A bundle name for a model spec: a checkpoint's file stem, else the spec made path-safe."""
    return Path(spec).stem if Path(spec).is_file() else spec.replace(":", "-").replace("/", "-")


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EdgeKitError(f"--{what} {text!r}: give numbers separated by commas, e.g. 0.25,0.5") from None


def _write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _db(value) -> str:
    return "-" if value is None else ("inf" if value == float("inf") else f"{value:.1f}")


def budget_text(top1_drop: float | None, agreement: float | None, sqnr_db: float | None) -> str:
    """The search's budget with its units, e.g. 'agreement >= 90.00% of inputs, SQNR >= 18 dB'."""
    parts = [f"agreement >= {100 * agreement:.2f}% of inputs" if agreement is not None else "",
             f"SQNR >= {sqnr_db:g} dB" if sqnr_db is not None else "",
             f"top-1 drop <= {top1_drop:g} pt (labelled data)" if top1_drop is not None else ""]
    return ", ".join(p for p in parts if p) or "each recipe's own budget"


def _speedup(c) -> str:
    if c.speedup is None:
        return "-"
    mark = {"faster": "[green]faster[/green]", "slower": "[red]slower[/red]"}.get(c.verdict, c.verdict or "")
    return f"{c.speedup:.2f}x {mark}"


def _note(c) -> str:
    parts = [c.error or c.why_not]
    if c.reused:
        parts.append("reused from the store (not side by side)")
    if c.built_from_cache and c.host_seconds is not None:
        parts.append("cached")
    return "; ".join(p for p in parts if p)


def _search_table(result, budget_top1_drop: float | None = None) -> Table:
    base = "" if result.baseline_accuracy is None else f", original top-1 {100 * result.baseline_accuracy:.2f}%"
    refs = ", ".join(f"{t}t: {name}" for t, name in sorted(result.references.items()))
    table = Table(title=f"Recipe search on '{result.device}': {len(result.candidates)} candidates, "
                        f"{result.measured} measured, {result.reused} reused{base}"
                        + (f"; speed-up vs the best uncompressed ({refs})" if refs else ""))
    for col in ("recipe", "runtime", "thr", "top-1", "drop pt", "agree", "lost", "SQNR dB", "int8 MACs", "size KiB",
                "size x", "p50 ms", "p99 ms", "speed-up", "energy mJ", "host s", "front", "note"):
        table.add_column(col, justify="left" if col in ("recipe", "runtime", "note", "speed-up") else "right")
    rows = sorted(result.candidates, key=lambda c: (not c.on_front, c.p50_ms or 1e9))
    rows += sorted(result.baselines, key=lambda c: (c.threads, c.p50_ms or 1e9))
    for c in rows:
        mark = "[bold green]chosen" if c.chosen else ("yes" if c.on_front else ("baseline" if c in result.baselines else ""))
        table.add_row(c.recipe, f"{c.runtime}/{c.format}", str(c.threads), _fmt(c.accuracy, ".2%"), _fmt(c.top1_drop, ".2f"),
                      _pct(c.agreement), _pct(c.agreement_lost), _db(c.sqnr_db), _pct(c.int8_macs_share),
                      _fmt(c.size_bytes, ".0f", 1 / 1024), _fmt(c.size_ratio, ".2f"), _fmt(c.p50_ms), _fmt(c.p99_ms),
                      _speedup(c), _fmt(c.energy_mj, ".2f"), _fmt(c.host_seconds, ".0f"), mark, _note(c))
    return table


def _student_table(result) -> Table:
    table = Table(title=f"Student search on '{result.device}' ({result.strategy}): {len(result.candidates)} of "
                        f"{result.space_size} tried, {result.measured} measured, {result.reused} reused, "
                        f"{result.trained} distilled, {result.seconds:.0f} s")
    for col in ("width", "depth", "res", "params", "MMACs", "p50 ms", "top-1", "front", "note"):
        table.add_column(col, justify="right" if col != "note" else "left")
    for c in sorted(result.candidates, key=lambda c: c.p50_ms or 0):
        table.add_row(f"{c.width:g}", f"{c.depth:g}", str(c.resolution), str(c.params), f"{c.macs / 1e6:.1f}",
                      _fmt(c.p50_ms), _fmt(c.accuracy, ".2%"), "[bold green]chosen" if c.chosen else ("yes" if c.on_front else ""),
                      c.skipped or ("latency reused" if c.reused_latency else ""))
    return table


def register(app: typer.Typer) -> None:
    @app.command("search")
    def search_cmd(
        model: str = typer.Argument(..., help="Model: torchvision:NAME, module:callable or a checkpoint file."),
        device: str = typer.Option("local", "--device", "-d", help="Device name from the inventory, or 'local'."),
        data: str = typer.Option("digits", "--data", help="'digits', an .npz file or an image folder."),
        budget_top1_drop: Optional[float] = typer.Option(None, "--budget-top1-drop", min=0.0, max=100.0,
                                                         help="Max top-1 drop, percentage points (labelled data; default: each recipe's)."),
        budget_agreement: Optional[float] = typer.Option(None, "--budget-agreement", min=0.0, max=1.0,
                                                         help="Floor on agreement with the original: share 0..1 of inputs whose top-1 is unchanged (e.g. 0.90)."),
        budget_sqnr_db: Optional[float] = typer.Option(None, "--budget-sqnr-db", help="Floor on the output SQNR vs the original, dB (e.g. 18)."),
        recipe: List[str] = typer.Option([], "--recipe", "-r", help="Candidate recipe (repeat); default: all for the device's kind."),
        set_: List[str] = typer.Option([], "--set", help="Override a field in every candidate: key=value."),
        quick: bool = typer.Option(False, "--quick", help="Use each recipe's smoke overrides (small inputs, short training)."),
        out: Path = typer.Option(Path("edgekit-search"), "--out", "-o", help="Folder for bundles, front.json and front.png."),
        results: Optional[Path] = typer.Option(None, "--results", help="Results store (default: $EDGEKIT_RESULTS or config)."),
        inventory: Optional[Path] = typer.Option(None, "--inventory", help="Device inventory file."),
        weights: Optional[Path] = typer.Option(None, "--weights", help="A state_dict for MODEL."),
        teacher: Optional[str] = typer.Option(None, "--teacher", help="Teacher for distillation steps (default: MODEL)."),
        threads: Optional[str] = typer.Option(None, "--threads", help="Measure every candidate at each thread count, e.g. 1,2 (default: each recipe's)."),
        max_host_seconds: Optional[float] = typer.Option(None, "--max-host-seconds", min=1.0,
                                                         help="Skip a candidate whose compress + package takes (or is predicted to take) longer."),
        baselines: bool = typer.Option(True, "--baselines/--no-baselines",
                                       help="Bench the uncompressed fp32 .pte and .onnx too: every candidate's speed-up with a noise verdict."),
        require_pays_off: bool = typer.Option(False, "--require-pays-off",
                                              help="Choose a compressed candidate only if it is faster beyond noise than the best uncompressed."),
        json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON document instead of the table."),
    ):
        """Try candidate recipes on a device, print the Pareto front and the recipe chosen within budget
        (with the uncompressed baselines: the fastest that pays off, else the best uncompressed, saying why)."""
        from kit.config import results_path
        from kit.models import load_model
        from kit.pipeline.measure import open_device
        from kit.results.store import ResultsStore
        from kit.search.recipes import candidates_for, device_kind, load_candidate, plot_front, search

        counts = None
        if threads:
            try:
                counts = [int(v) for v in threads.split(",") if v.strip()]
            except ValueError:
                counts = []
            if not counts or any(v < 1 for v in counts):
                raise EdgeKitError(f"--threads {threads!r}: give whole numbers >= 1 separated by commas, e.g. 1,2")
        net = load_model(model, weights)
        teacher_net = load_model(teacher, None) if teacher else None
        with open_device(device, inventory) as dev, ResultsStore(results or results_path()) as store:
            candidates = ([load_candidate(r, set_, quick) for r in recipe] if recipe
                          else candidates_for(device_kind(dev), set_, quick))
            with progress_bars() as (progress, step):
                result = search(net, data, dev, candidates, store=store, out_dir=out / "bundles",
                                budget_top1_drop=budget_top1_drop, budget_agreement=budget_agreement,
                                budget_sqnr_db=budget_sqnr_db, teacher=teacher_net, model_name=_model_name(model),
                                threads=counts, baselines=baselines, max_host_seconds=max_host_seconds,
                                require_pays_off=require_pays_off,
                                progress=progress, step=step)
        out.mkdir(parents=True, exist_ok=True)
        plot = plot_front(result, out / "front.png")
        _write_json(out / "front.json", result.to_dict())
        if json_out:
            print_json(result.to_dict())
            return
        stdout.print(_search_table(result, budget_top1_drop))
        budget = budget_text(budget_top1_drop, budget_agreement, budget_sqnr_db)
        if result.chosen:
            why = f"; {result.chosen_why}" if result.chosen_why else ""
            stdout.print(f"chosen: [bold]{result.chosen}[/bold] at {result.chosen_threads} thread(s) "
                         f"(fastest within {budget}{why})", soft_wrap=True)
            stdout.print(f"host:   {result.host_seconds:.0f} s building in this run", soft_wrap=True)
        else:
            stdout.print(f"[red]no candidate is within the budget ({budget})[/red]", soft_wrap=True)
        stdout.print(f"plot:   {plot}")
        stdout.print(f"front:  {out / 'front.json'}")

    @app.command("student-search")
    def student_search_cmd(
        teacher: str = typer.Argument("teacher", help="Teacher model spec ('teacher' = the demo CNN, trained first)."),
        device: str = typer.Option("local", "--device", "-d"),
        data: str = typer.Option("digits", "--data"),
        widths: str = typer.Option("0.25,0.5,0.75", help="Width multipliers, comma-separated."),
        depths: str = typer.Option("0.5,1.0", help="Depth multipliers, comma-separated."),
        resolutions: str = typer.Option("16,24,32", help="Input resolutions, comma-separated."),
        strategy: str = typer.Option("grid", help="grid or evolution."),
        time_budget: float = typer.Option(600.0, "--time-budget", min=1.0, help="Seconds to spend searching."),
        max_candidates: Optional[int] = typer.Option(None, "--max-candidates", min=1),
        latency_budget_ms: Optional[float] = typer.Option(None, "--latency-budget-ms", min=0.0,
                                                          help="Skip training students slower than this on the device."),
        epochs: int = typer.Option(2, "--epochs", min=1, help="Distillation epochs per candidate."),
        max_samples: Optional[int] = typer.Option(None, "--max-samples", min=2, help="Distil on the first N training samples."),
        train_teacher: int = typer.Option(3, "--train-teacher", min=0, help="Epochs to train the teacher first (0: as loaded)."),
        weights: Optional[Path] = typer.Option(None, "--weights"),
        results: Optional[Path] = typer.Option(None, "--results"),
        inventory: Optional[Path] = typer.Option(None, "--inventory"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the result as JSON here."),
    ):
        """Search MobileNet student width/depth/resolution for a device (latency measured there)."""
        from kit.config import results_path
        from kit.pipeline.measure import open_device
        from kit.results.store import ResultsStore
        from kit.search.students import StudentSpace, prepare_teacher, student_search

        space = StudentSpace(widths=_floats(widths, "widths"), depths=_floats(depths, "depths"),
                             resolutions=[int(v) for v in _floats(resolutions, "resolutions")])
        with progress_bars() as (progress, step):
            net = prepare_teacher(teacher, weights, data=data, epochs=train_teacher, progress=progress, step=step)
            with open_device(device, inventory) as dev, ResultsStore(results or results_path()) as store:
                result = student_search(net, data, dev, store=store, space=space, strategy=strategy,
                                        time_budget_s=time_budget, max_candidates=max_candidates,
                                        latency_budget_ms=latency_budget_ms, distill_epochs=epochs,
                                        distill_max_samples=max_samples, progress=progress, step=step)
        stdout.print(_student_table(result))
        if result.stopped_by_time:
            console.print(f"[yellow]stopped by the time budget ({time_budget:g} s)")
        if out:
            _write_json(out, result.to_dict())
            stdout.print(f"result: {out}")
