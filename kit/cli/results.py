"""`edgekit results list/show/export`, `edgekit compare A B` and `edgekit report`."""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from kit.cli._ui import print_json, stdout

_RESULTS_HELP = "Results store (default: $EDGEKIT_RESULTS or <config dir>/results.db)."
_JSON_HELP = "Print one JSON document (the same as --format json)."


class Fmt(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


def _open(results: Optional[Path]):
    from kit.config import results_path
    from kit.results.store import ResultsStore

    return ResultsStore(results or results_path(), must_exist=True)


def _f(v, spec=".3f") -> str:
    return "" if v is None else format(v, spec)


def _when(t) -> str:
    return "" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _measurements_table(rows: list[dict], title: str) -> Table:
    from kit.tasks.spec import metric_text

    energy = any(r.get("energy_mj") is not None for r in rows)
    task_of = lambda r: (r.get("manifest") or json.loads(r.get("manifest_json") or "{}") or {}).get("task")  # noqa: E731
    tasks = any(task_of(r) for r in rows)  # a detector/segmenter: its metric beside latency
    table = Table(title=escape(title))
    for col in ("id", "run", "variant", "device", "runtime", "thr", "KiB", "top-1") + (("task metric",) if tasks else ()) + (
            "p50 ms", "p99 ms", "cv") + (("mJ",) if energy else ()) + (
            "load ms", "1st ms", "import MB", "model MB", "infer peak MB", "planned MB", "ref"):
        table.add_column(col, justify="left" if col in ("variant", "device", "runtime") else "right", overflow="fold")
    for r in rows:
        acc = r["accuracy"] if r["accuracy"] is not None else r.get("artifact_accuracy")
        table.add_row(str(r["id"]), str(r["run_id"]), escape(r["variant"] or r["sha256"][:12]),
                      escape(r["device"]) + (" (emulated)" if r.get("emulated") else ""), r["runtime"], str(r["threads"]),
                      _f(r["size_bytes"] / 1024 if r["size_bytes"] is not None else None, ".0f"),
                      "" if acc is None else f"{100 * acc:.2f}%",
                      *((escape(metric_text(task_of(r))),) if tasks else ()),
                      _f(r["p50_ms"]), _f(r["p99_ms"]), _f(r["cv"], ".2f"),
                      *((_f(r.get("energy_mj")),) if energy else ()), _f(r.get("load_ms"), ".1f"), _f(r.get("first_inference_ms"), ".2f"),
                      _f(r.get("runtime_import_mb"), ".1f"), _f(r.get("model_load_mb"), ".1f"), _f(r.get("inference_peak_mb"), ".1f"),
                      _f(r.get("planned_mb"), ".2f"), {1: "ok", 0: "FAILED", None: ""}[r["reference_passed"]])
    return table


def register(app: typer.Typer) -> None:
    results_app = typer.Typer(help="The results store: runs and measurements, as tables, JSON or CSV.", no_args_is_help=True)
    app.add_typer(results_app, name="results")

    @results_app.command("list")
    def results_list(
        fmt: Fmt = typer.Option(Fmt.table, "--format", "-f", help="table, json or csv."),
        results: Optional[Path] = typer.Option(None, "--results", "--db", help=_RESULTS_HELP),
        as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
    ):
        """List the recorded runs."""
        from kit.results.export import runs_text

        with _open(results) as store:
            runs = store.runs()
            if as_json:
                print_json(runs)
                return
            if fmt != Fmt.table:
                typer.echo(runs_text(runs, fmt.value), nl=False)
                return
            table = Table(title=f"runs in {store.path}")
            for col in ("run", "started", "kind", "measurements", "devices", "note"):
                table.add_column(col, justify="right" if col in ("run", "measurements") else "left", overflow="fold")
            for r in runs:
                table.add_row(str(r["id"]), _when(r["started"]), escape(r["kind"]), str(r["measurements"]),
                              escape((r["devices"] or "").replace(",", ", ")), escape(r["note"] or ""))
            stdout.print(table)

    @results_app.command("show")
    def results_show(
        run: Optional[int] = typer.Argument(None, help="Run id (default: the newest measurement of every artifact on every device)."),
        device: Optional[str] = typer.Option(None, help="Only this device."),
        fmt: Fmt = typer.Option(Fmt.table, "--format", "-f", help="table, json or csv."),
        samples: bool = typer.Option(False, help="Include every timed repetition (json/csv)."),
        ops: bool = typer.Option(False, "--ops", help="Also the per-operator table of each profiled measurement (bench --profile)."),
        results: Optional[Path] = typer.Option(None, "--results", "--db", help=_RESULTS_HELP),
        as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
    ):
        """Show the measurements of one run, or the latest of each artifact/device."""
        from kit.cli._ops import ops_table
        from kit.results.export import export_text, to_records

        with _open(results) as store:
            if run is not None:
                store.run(run)
                rows = store.measurements(run, device=device)
            else:
                rows = store.latest_measurements(device=device)
            profiles = {r["id"]: store.profile(r["id"]) for r in rows} if ops else {}
            if as_json:
                recs = to_records(rows, samples=samples)
                for rec, r in zip(recs, rows) if ops else ():
                    rec["profile"] = profiles[r["id"]]
                print_json(recs)
                return
            if fmt != Fmt.table:
                typer.echo(export_text(rows, fmt.value, samples=samples), nl=False)
                return
            stdout.print(_measurements_table(rows, f"run {run}" if run is not None else "latest measurement per artifact, device and threads"))
            for r in rows if ops else ():
                stdout.print(ops_table(profiles[r["id"]], f"measurement {r['id']} {r['variant'] or r['sha256'][:12]} on {r['device']}"))

    @results_app.command("export")
    def results_export(
        fmt: Fmt = typer.Option(Fmt.csv, "--format", "-f", help="json or csv."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write (default: standard output)."),
        run: Optional[int] = typer.Option(None, help="Only this run."),
        device: Optional[str] = typer.Option(None, help="Only this device."),
        samples: bool = typer.Option(False, help="Include every timed repetition."),
        results: Optional[Path] = typer.Option(None, "--results", "--db", help=_RESULTS_HELP),
    ):
        """Export measurements as CSV or JSON."""
        from kit.errors import EdgeKitError
        from kit.results.export import export

        if fmt == Fmt.table:
            raise EdgeKitError("results export --format: choose json or csv (use 'edgekit results show' for a table)")
        with _open(results) as store:
            text = export(store, fmt.value, out, run_id=run, device=device, samples=samples)
        if out is None:
            typer.echo(text, nl=False)
        else:
            stdout.print(f"wrote {out}")

    @app.command("compare")
    def compare_cmd(
        a: str = typer.Argument(..., help="Run id, device name or artifact (sha256 prefix, bundle id, variant); "
                                          "prefix with run:, device: or artifact: when ambiguous."),
        b: str = typer.Argument(..., help="The same kind of thing as A."),
        confidence: float = typer.Option(0.99, min=0.5, max=0.9999, help="Confidence level of the noise verdict."),
        fmt: Fmt = typer.Option(Fmt.table, "--format", "-f", help="table or json (csv: use 'edgekit results export')."),
        results: Optional[Path] = typer.Option(None, "--results", "--db", help=_RESULTS_HELP),
        ops: bool = typer.Option(False, "--ops", help="Line up the per-operator profiles of each pair by operator type."),
        as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
    ):
        """Compare two runs, two devices or two artifacts: ratios B/A and whether latency moved beyond noise."""
        from kit.cli._ops import ops_compare_table
        from kit.results.compare import compare
        from kit.results.ops import comparison_ops

        with _open(results) as store:
            c = compare(store, a, b, confidence=confidence)
            op_rows = comparison_ops(store, c) if ops else []
        if as_json or fmt != Fmt.table:
            doc = {**c.to_dict(), **({"ops": op_rows} if ops else {})}
            print_json(doc) if as_json else typer.echo(json.dumps(doc, indent=2))
            return
        energy = any(r.energy_ratio is not None for r in c.rows)
        table = Table(title=escape(f"{c.a} (A) vs {c.b} (B)"))
        cols = ["", "A p50 ms", "B p50 ms", "B/A p50", "B/A p99", "B/A size", "Δ top-1"] + (["B/A mJ"] if energy else []) + \
            [f"{confidence:.0%} CI", "verdict"]
        for col in cols:
            table.add_column(col, justify="left" if col in ("", "verdict") else "right", no_wrap=col == "verdict",
                             min_width=22 if col == "" else None)
        for r in c.rows:
            v = r.latency
            style = {"slower": "red", "faster": "green"}.get(v.verdict, "")
            table.add_row(escape(r.key), _f(r.a["p50_ms"]), _f(r.b["p50_ms"]), _f(r.p50_ratio, ".2f") + "x", _f(r.p99_ratio, ".2f") + "x",
                          _f(r.size_ratio, ".2f") + "x" if r.size_ratio is not None else "",
                          "" if r.accuracy_delta is None else f"{100 * r.accuracy_delta:+.2f} pt",
                          *([_f(r.energy_ratio, ".2f")] if energy else []),
                          "" if v.ci_low is None else f"{v.ci_low:.2f}-{v.ci_high:.2f}",
                          f"[{style}]{v.verdict}[/{style}]" if style else v.verdict)
        stdout.print(table)
        bases = sorted({r.latency.basis for r in c.rows})
        stdout.print(escape(f"verdict basis: {'; '.join(bases)} (bootstrap CI of the median ratio B/A and Mann-Whitney U)"))
        for label, keys in (("only in A", c.only_in_a), ("only in B", c.only_in_b)):
            if keys:
                stdout.print(escape(f"{label}: {', '.join(keys)}"))
        for r in c.rows:
            mem = [f"{side}: load +{_f(x.get('model_load_mb'), '.1f')} MB, import {_f(x.get('runtime_import_mb'), '.1f')} MB, "
                   f"inference peak {_f(x.get('inference_peak_mb'), '.1f')} MB" for side, x in (("A", r.a), ("B", r.b))]
            stdout.print(escape(f"memory {r.key}: " + "; ".join(mem)))
        for o in op_rows:
            stdout.print(ops_compare_table(o["ops"], o["a"], o["b"]) if o["ops"] else escape(f"{o['key']}: {o['missing']}"))

    @app.command("report")
    def report_cmd(
        out: Path = typer.Option(Path("edgekit-report"), "--out", "-o", help="Folder for report.html."),
        run: Optional[int] = typer.Option(None, help="Report one run (default: latest measurement of everything)."),
        title: Optional[str] = typer.Option(None, help="Page title."),
        results: Optional[Path] = typer.Option(None, "--results", "--db", help=_RESULTS_HELP),
    ):
        """Write a self-contained HTML report (plots embedded) from the results store."""
        from kit.results.report import write_store_report

        with _open(results) as store:
            path = write_store_report(store, out, run_id=run, title=title)
        stdout.print(f"report: {path}")

