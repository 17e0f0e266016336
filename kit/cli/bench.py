"""`edgekit bench BUNDLE --device NAME`: measure one bundle on one device and store the figures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from kit.cli._ui import progress_bars, stdout


@dataclass
class BenchRecord:
    run_id: int
    measurement_id: int
    results: str
    measurement: object
    regression: object | None = None
    twins: list = field(default_factory=list)  # kit.results.report.Speedup: compressed vs uncompressed twin


def bench_to_store(bundle_path: Path, device: str, *, runs: int, warmup: int, threads: int, inventory: Path | None,
                   results: Path | None, variant: str | None, baseline: int | None, deadline_s: float,
                   progress=None, step=None) -> BenchRecord:
    """Connect, push (skipped when unchanged), bench with the agent, store; compare to a baseline run."""
    from kit.config import results_path
    from kit.devices.bench import BenchOptions, bench
    from kit.devices.inventory import Inventory, connect
    from kit.package.bundle import Bundle
    from kit.results.store import ResultsStore

    step = step or (lambda label: None)
    bundle = Bundle.load(bundle_path)
    inv = Inventory.load(inventory) if device != "local" or inventory else Inventory()
    entry = inv.select(device)
    if len(entry) != 1:
        from kit.errors import EdgeKitError

        raise EdgeKitError(f"--device {device}: names {len(entry)} devices; bench one device at a time")
    step(f"connecting to {device}")
    with connect(entry[0], inv) as dev:
        if hasattr(dev, "ensure_agent"):
            step("agent")
            dev.ensure_agent(progress)
            step(f"pushing {bundle.path.name}")
            dev.stage_bundle(bundle.path, progress)  # bench() re-stages: content-addressed, so no second send
        step(f"benchmarking {runs} runs x {threads} thread(s) on {device}")
        measurement = bench(dev, bundle, BenchOptions(runs=runs, warmup=warmup, threads=threads, deadline_s=deadline_s))
    path = Path(results) if results else results_path()
    with ResultsStore(path) as store:
        run_id = store.start_run("bench", f"{bundle.path.name} on {device}",
                                 {"runs": runs, "warmup": warmup, "threads": threads, "device": device})
        mid = store.record(run_id, bundle, measurement, variant or bundle.manifest.get("variant") or bundle.path.name,
                           emulated=getattr(entry[0], "emulated", None))
        store.finish_run(run_id)
        from kit.results.report import twin_speedups

        twins = twin_speedups(store, mid)
        verdict = None
        if baseline is not None:
            from kit.results.regression import check_against_baseline

            verdict = check_against_baseline(store, run_id, baseline)
    return BenchRecord(run_id, mid, str(path), measurement, verdict, twins)


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
    ):
        """Push BUNDLE to a device, measure it with the device agent and store the figures."""
        with progress_bars() as (progress, step):
            rec = bench_to_store(bundle, device, runs=runs, warmup=warmup, threads=threads, inventory=inventory,
                                 results=results, variant=variant, baseline=baseline, deadline_s=deadline_s,
                                 progress=progress, step=step)
        m = rec.measurement
        table = Table(title=f"{m.model_name or bundle.name} on {m.device} ({m.runtime}, {m.threads} thread(s))")
        for col in ("p50 ms", "p90 ms", "p99 ms", "mean ms", "cv", "runs", "load ms", "peak RSS MB", "ref check"):
            table.add_column(col, justify="right")
        table.add_row(f"{m.p50_ms:.3f}", f"{m.p90_ms:.3f}", f"{m.p99_ms:.3f}", f"{m.mean_ms:.3f}", f"{m.cv:.3f}", str(m.runs),
                      f"{m.load_ms:.1f}", f"{m.peak_rss_mb:.1f}", "ok" if m.reference_passed else "FAILED")
        stdout.print(table)
        power = m.power or {}
        stdout.print(f"power: {power.get('mean_w', '')} W" if power.get("available") else f"power: n/a ({power.get('reason', '')})")
        stdout.print(f"stored as run {rec.run_id} (measurement {rec.measurement_id}) in {rec.results}")
        # Say it when compression did not pay off on this device, rather than leave it to the report.
        for s in rec.twins:
            style = "green" if s.verdict == "faster" else "bold yellow"
            stdout.print(f"[{style}]{'' if s.verdict == 'faster' else 'not faster: '}{escape(s.honest_line)}")
        if rec.regression is not None:
            v = rec.regression
            rt = Table(title=f"run {v.run_id} vs baseline run {v.baseline_run_id}")
            for col in ("variant", "metric", "baseline", "current", "change", "verdict"):
                rt.add_column(col)
            def fmt(x):
                return f"{x:.4g}" if isinstance(x, float) else str(x)

            for r in v.rows:
                rt.add_row(r.key if isinstance(r.key, str) else str(r.key), r.metric, fmt(r.baseline), fmt(r.current),
                           "" if r.change is None else f"{r.change:.3f}", ("[red]" if r.regressed else "") + r.verdict)
            stdout.print(rt)
            if v.regressed:
                from kit.errors import EdgeKitError

                class Regressed(EdgeKitError):
                    exit_code = 1  # CI gates on this: a regression, not a usage error (2)

                raise Regressed(f"regression against the baseline run {v.baseline_run_id}: "
                                + ", ".join(f"{r.key} {r.metric} {r.verdict}" for r in v.rows if r.regressed))
