"""Shared terminal helpers for CLI commands: rich progress and tables, JSON for scripts.

Conventions every command follows: heavy libraries (torch, executorch, onnxruntime, paramiko) are
imported inside the command function, never at module top; list/show/status/bench/compare take
`--json` and then print exactly one JSON document on stdout via print_json(); tables go through
`stdout`, which never truncates cells when piped.
"""

from __future__ import annotations

import contextlib
import json

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


def print_json(obj) -> None:
    """One JSON document on stdout (dataclasses and paths as strings via default=str)."""
    import sys

    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()
