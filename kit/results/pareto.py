"""The one Pareto front of the kit: which points no other point beats on every objective.

Pure functions over mappings (rows, dataclass dicts); the searches pick from the front and the
report draws it.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

Objectives = Sequence[tuple[str, str]]  # (key, "min" | "max")


def _dominates(q: Mapping, p: Mapping, objectives: Objectives) -> bool:
    """q is at least as good as p on every objective and strictly better on one."""
    better = False
    for key, direction in objectives:
        a, b = (q[key], p[key]) if direction == "min" else (p[key], q[key])
        if a > b:
            return False
        better = better or a < b
    return better


def pareto_front(points: Sequence[Mapping], objectives: Objectives) -> list[bool]:
    """True for each point no other point dominates. Written out: it is a few lines over a
    handful of candidates. Ties dominate neither way, so both stay on the front."""
    return [not any(_dominates(q, p, objectives) for q in points if q is not p) for p in points]


def front_of(items: Sequence, objectives: Objectives, value: Callable[[object, str], object] = getattr) -> list:
    """The items on the front (in their order); `value(item, key)` reads an objective (default
    getattr). Items missing a value (None) cannot be placed and are left out."""
    known = [(item, {k: value(item, k) for k, _ in objectives}) for item in items]
    known = [(item, row) for item, row in known if all(v is not None for v in row.values())]
    rows = [row for _, row in known]
    return [item for (item, _), on in zip(known, pareto_front(rows, objectives)) if on]
