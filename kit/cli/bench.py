"""`edgekit bench BUNDLE --device NAME`: measure one bundle on one device and store the figures
(kit.pipeline.measure does the work; this parses, opens the device and the store, and renders)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from kit.cli._ops import memory_line, ops_table
from kit.cli._ui import print_json, progress_bars, stdout
from kit.errors import EdgeKitError


class RegressionFound(EdgeKitError):
    exit_code = 1  # CI gates on this: a regression, not a usage error (2)


def _regression_message(v) -> str:
    return (f"regression against the baseline run {v.baseline_run_id}: "
            + ", ".join(f"{r.key} {r.metric} {r.verdict}" for r in v.rows if r.regressed))


def _measurement_table(m, title: str) -> Table:
    table = Table(title=title)
    mem = m.memory or {}
    for col in ("p50 ms", "p90 ms", "p99 ms", "mean ms", "cv", "runs", "load ms", "1st ms", "model load MB", "peak RSS MB", "ref check"):
        table.add_column(col, justify="right")
    load_mb = mem.get("model_load_mb")
    table.add_row(f"{m.p50_ms:.3f}", f"{m.p90_ms:.3f}", f"{m.p99_ms:.3f}", f"{m.mean_ms:.3f}", f"{m.cv:.3f}", str(m.runs),
                  f"{m.load_ms:.1f}", f"{m.first_inference_ms:.2f}", "" if load_mb is None else f"{load_mb:.1f}",
                  f"{m.peak_rss_mb:.1f}", "ok" if m.reference_passed else "FAILED")
    return table


def _regression_table(v) -> Table:
    def fmt(x):
        return f"{x:.4g}" if isinstance(x, float) else str(x)

    rt = Table(title=f"run {v.run_id} vs baseline run {v.baseline_run_id}")
    for col in ("variant", "metric", "baseline", "current", "change", "verdict"):
        rt.add_column(col)
    for r in v.rows:
        rt.add_row(r.key if isinstance(r.key, str) else str(r.key), r.metric, fmt(r.baseline), fmt(r.current),
                   "" if r.change is None else f"{r.change:.3f}", ("[red]" if r.regressed else "") + r.verdict)
    return rt


def _without_profile_bytes(m: dict) -> dict:
    prof = (m.get("raw") or {}).get("profile")
    if isinstance(prof, dict) and "data" in prof:  # the raw bytes are in the store (profiles table)
        m["raw"]["profile"] = {k: v for k, v in prof.items() if k != "data"}
    return m


def _as_json(out, results: Path) -> dict:
    return {"run_id": out.run_id, "measurement_id": out.measurement_id, "results": str(results),
            "measurement": _without_profile_bytes(asdict(out.measurement)),
            "twins": [{"compressed": s.compressed.label, "twin": s.twin.label, "device": s.compressed.device,
                       "speedup": s.speedup, "verdict": s.verdict, "line": s.honest_line} for s in out.twins],
            "regression": out.regression.to_dict() if out.regression is not None else None}


def _cpus(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        cpus = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        cpus = []
    if not cpus or min(cpus) < 0:
        raise typer.BadParameter(f"{text!r}: give CPU numbers separated by commas, e.g. 0,1", param_hint="--cpus")
    return cpus


def _cooldown(text: str | None, device: str, inventory) -> float | None:
    if text is None:
        return None
    if text == "inventory":
        from kit.devices.inventory import Inventory

        entries = Inventory.load(inventory).select(device)
        value = entries[0].vars.get("cooldown_c") if len(entries) == 1 else None
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise EdgeKitError(f"--cooldown inventory: device {device} has no numeric vars.cooldown_c in the inventory; "
                               "give degrees, e.g. --cooldown 55")
        return float(value)
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: degrees C (e.g. 55) or 'inventory'", param_hint="--cooldown") from None


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench_cmd(
        bundle: Path = typer.Argument(..., help="A bundle folder made by 'edgekit package'."),
        device: str = typer.Option("local", "--device", "-d", help="Device name from the inventory ('local' = this machine)."),
        runs: int = typer.Option(50, min=1, help="Timed runs."),
        warmup: int = typer.Option(5, min=0, help="Untimed warm-up runs."),
        threads: int = typer.Option(1, min=1, help="Runtime threads on the device."),
        baseline: Optional[int] = typer.Option(None, help="Results run id to compare with; exit 1 on a regression."),
        variant: Optional[str] = typer.Option(None, help="Variant label in the results store (default: manifest or folder name)."),
        deadline_s: float = typer.Option(600.0, min=1, help="Seconds the device may take for the measurement."),
        inventory: Optional[Path] = typer.Option(None, "--inventory", "-i", help="Inventory YAML (default: <config dir>/devices.yaml)."),
        results: Optional[Path] = typer.Option(None, help="Results store (default: $EDGEKIT_RESULTS or <config dir>/results.db)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON document instead of tables."),
        profile: bool = typer.Option(False, "--profile", help="After the timed runs, profiled runs in a separate process: "
                                     "a per-operator table (ETDump for .pte, ORT's profiler for .onnx/.ort), stored."),
        profile_runs: int = typer.Option(10, "--profile-runs", min=2, help="Profiled runs (with --profile)."),
        power: bool = typer.Option(False, "--power", help="Measure power during the timed window (where the device has a sensor)."),
        cooldown: Optional[str] = typer.Option(None, "--cooldown", help="Wait until the hottest thermal zone is below "
                                               "this many degrees C before timing; 'inventory' = the entry's cooldown_c."),
        cpus: Optional[str] = typer.Option(None, "--cpus", help="Pin the model to these CPUs, e.g. 4,5,6,7."),
        pte_runtime: str = typer.Option("auto", "--pte-runtime", help="For .pte bundles: native (the C++ runner the kit "
                                        "builds and pushes; no torch on the device), python (ExecuTorch's Python "
                                        "bindings), auto (native when it can be built and pushed, else python)."),
    ):
        """Push BUNDLE to a device, measure it with the device agent and store the figures."""
        from kit.config import results_path
        from kit.devices.bench import BenchOptions
        from kit.package.bundle import Bundle
        from kit.pipeline.measure import measure, open_device
        from kit.results.store import ResultsStore

        if pte_runtime not in ("python", "native", "auto"):
            raise typer.BadParameter(f"{pte_runtime!r} is not one of python, native, auto", param_hint="--pte-runtime")
        b = Bundle.load(bundle)
        path = Path(results) if results else results_path()
        options = BenchOptions(runs=runs, warmup=warmup, threads=threads, deadline_s=deadline_s, pte_runtime=pte_runtime,
                               profile=profile, profile_runs=profile_runs, power=power, cpus=_cpus(cpus),
                               cooldown_c=_cooldown(cooldown, device, inventory))
        with progress_bars() as (progress, step):
            step(f"connecting to {device}")
            with open_device(device, inventory) as dev, ResultsStore(path) as store:
                out = measure(dev, b, store, options=options, variant=variant, baseline_run=baseline,
                              progress=progress, step=step)
        v = out.regression
        if as_json:
            print_json(_as_json(out, path))
            if v is not None and v.regressed:
                raise RegressionFound(_regression_message(v))
            return
        m = out.measurement
        rt = m.runtime + (f" via the {m.raw['pte_runtime']} runtime" if m.raw.get("pte_runtime") else "")
        stdout.print(_measurement_table(m, f"{m.model_name or bundle.name} on {m.device} ({rt}, {m.threads} thread(s))"))
        stdout.print(escape(memory_line(m.memory)))
        if profile:
            stdout.print(ops_table(m.profile, m.model_name or bundle.name))
        if m.raw.get("native_runner_skipped"):
            stdout.print(f"[yellow]native runner not used: {escape(m.raw['native_runner_skipped'])}")
        power = m.power or {}
        stdout.print(f"power: {power.get('mean_w', '')} W" if power.get("available") else f"power: n/a ({power.get('reason', '')})")
        stdout.print(f"stored as run {out.run_id} (measurement {out.measurement_id}) in {path}")
        # Say it when compression did not pay off on this device, rather than leave it to the report.
        for s in out.twins:
            style = "green" if s.verdict == "faster" else "bold yellow"
            stdout.print(f"[{style}]{'' if s.verdict == 'faster' else 'not faster: '}{escape(s.honest_line)}")
        if v is not None:
            stdout.print(_regression_table(v))
            if v.regressed:
                raise RegressionFound(_regression_message(v))
