"""Progress reporting that stays out of library code's way.

Library functions take an optional `progress` callable (label, done, total); the CLI passes
one backed by a rich progress bar, tests pass nothing. No global state.
"""

from __future__ import annotations

from typing import Callable, Optional

ProgressFn = Optional[Callable[[str, int, int], None]]


def report(progress: ProgressFn, label: str, done: int, total: int) -> None:
    if progress is not None:
        progress(label, done, total)
