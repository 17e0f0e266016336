"""Shared terminal helpers for CLI commands: rich progress and tables."""

from __future__ import annotations

import contextlib

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)
stdout = Console()


@contextlib.contextmanager
def progress_bars():
    """Yields (progress_fn, step_fn) for the library's ProgressFn/step callbacks."""
    bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)
    tasks: dict[str, int] = {}

    def progress(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = bars.add_task(label, total=total)
        bars.update(tasks[label], completed=done, total=total)

    def step(label: str) -> None:
        bars.console.log(f"[cyan]▸ {label}")

    with bars:
        yield progress, step
