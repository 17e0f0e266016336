"""`edgekit demo`: the whole job on this machine (kit.pipeline.demo); this parses, calls and renders."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from kit.cli._ui import progress_bars, stdout


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Path = typer.Option(Path("edgekit-out"), "--out", "-o", help="Folder for bundles, results.db and report.html."),
        data: str = typer.Option("digits", help="'digits' (bundled), an .npz file or an image folder."),
        image_size: int = typer.Option(32, min=8, max=224, help="Input images are resized to this square size."),
        teacher_epochs: int = typer.Option(6, min=1),
        student_epochs: int = typer.Option(8, min=1),
        width_mult: float = typer.Option(0.5, min=0.1, max=1.5, help="MobileNetV2 student width multiplier."),
        runs: int = typer.Option(100, min=1, help="Timed runs per artifact on the device."),
        threads: int = typer.Option(1, min=1, help="Threads per runtime on the device."),
    ):
        """Run the whole job on this machine: data, teacher, KD student, int8, packaging, bench, report."""
        from kit.pipeline.demo import DemoConfig, run_demo

        cfg = DemoConfig(out=out, data=data, image_size=image_size, teacher_epochs=teacher_epochs,
                         student_epochs=student_epochs, width_mult=width_mult, runs=runs, threads=threads)
        with progress_bars() as (progress, step):
            result = run_demo(cfg, progress, step)
        table = Table(title=f"EdgeKit demo on device 'local' ({result.seconds:.0f} s)")
        for col in ("variant", "top-1", "size KiB", "p50 ms", "p99 ms", "ref check"):
            table.add_column(col, justify="right" if col != "variant" else "left")
        for v in result.variants:
            table.add_row(v.variant, f"{100 * v.accuracy:.2f}%",
                          "" if v.size_bytes is None else f"{v.size_bytes / 1024:.0f}",
                          "" if v.p50_ms is None else f"{v.p50_ms:.3f}", "" if v.p99_ms is None else f"{v.p99_ms:.3f}",
                          "" if v.reference_passed is None else ("ok" if v.reference_passed else "FAILED"))
        stdout.print(table)
        stdout.print(f"bundles:  {Path(result.out) / 'bundles'}")
        stdout.print(f"results:  {result.results_db}")
        stdout.print(f"report:   {result.report}")
