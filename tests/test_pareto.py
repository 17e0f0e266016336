"""kit.results.pareto: the one Pareto front, as flags over mappings and as the members of a list."""

from __future__ import annotations

from dataclasses import dataclass

from kit.results.pareto import front_of, pareto_front


@dataclass
class _P:
    name: str
    p50_ms: float | None
    accuracy: float | None


def test_front_of_reads_attributes_and_leaves_out_unplaceable_items():
    items = [_P("fast", 1.0, 0.80), _P("accurate", 3.0, 0.95), _P("dominated", 3.5, 0.90), _P("unmeasured", None, 0.99),
             _P("twin-of-fast", 1.0, 0.80)]
    front = front_of(items, [("p50_ms", "min"), ("accuracy", "max")])
    assert [p.name for p in front] == ["fast", "accurate", "twin-of-fast"]  # ties stay, None cannot be placed
    assert front_of([], [("p50_ms", "min")]) == []


def test_direction_and_custom_values():
    pts = [{"p50_ms": 1.0, "size": 10}, {"p50_ms": 2.0, "size": 5}, {"p50_ms": 2.0, "size": 20}]
    assert pareto_front(pts, [("p50_ms", "min"), ("size", "min")]) == [True, True, False]
    assert pareto_front(pts, [("p50_ms", "min"), ("size", "max")]) == [True, False, True]
    rows = [{"t": 1.0, "acc": 0.5}, {"t": 2.0, "acc": 0.4}]
    assert front_of(rows, [("t", "min"), ("acc", "max")], lambda r, k: r[k]) == [rows[0]]
