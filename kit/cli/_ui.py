"""Shared terminal helpers for CLI commands: rich progress and tables, JSON for scripts.

Conventions every command follows: heavy libraries (torch, executorch, onnxruntime, paramiko) are
imported inside the command function, never at module top; list/show/status/bench/compare take
`--json` and then print exactly one JSON document on stdout via print_json(); tables go through
`stdout`, which never truncates cells when piped.
"""

from __future__ import annotations

import contextlib
import json
import sys

from rich.console import Console, ConsoleDimensions
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.protocol import is_renderable

# Width offered to rich when the output is a pipe or a file: more than any table needs, so no cell is
# cut or folded. Each print then renders at its content's natural width (no padding out to this).
UNBOUNDED_WIDTH = 100_000


class _PipeSafeConsole(Console):
    """A Console that never truncates when its file is not a terminal (checked per print, so
    redirection after import counts): `edgekit recipes list | grep raspberry-pi-5` sees whole names,
    not the 80-column "raspbe…" rich falls back to without a terminal."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(UNBOUNDED_WIDTH, size.height)

    def print(self, *objects, **kwargs) -> None:
        if kwargs.get("width") is None and objects and not self.is_terminal:
            kwargs["width"] = self._natural_width(objects, kwargs.get("markup"), kwargs.get("emoji"))
        super().print(*objects, **kwargs)

    def _natural_width(self, objects, markup, emoji) -> int:
        """Room for everything on one line at its natural width, and never less than rich's usual
        width (so a rule or a panel looks as it did)."""
        options = self.options
        # Console.print shows a non-renderable (a number, a dict) as its str or pretty form: measure the str.
        texts = [o if is_renderable(o) and not isinstance(o, str) else self.render_str(str(o), markup=markup, emoji=emoji)
                 for o in objects]
        natural = sum(Measurement.get(self, options, t).maximum for t in texts) + len(texts) - 1
        return max(min(natural, UNBOUNDED_WIDTH), super().size.width)


console = _PipeSafeConsole(stderr=True)  # progress, steps, warnings
stdout = _PipeSafeConsole()  # tables and other results


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
        # print, not log: a step line is what happened, without a timestamp or this file's name and line.
        bars.console.print(f"[cyan]▸ {label}", highlight=False, soft_wrap=True)

    with bars:
        yield progress, step


def print_json(obj) -> None:
    """One JSON document on stdout (dataclasses and paths as strings via default=str)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()
