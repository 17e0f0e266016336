"""What a build report says about a search candidate: the share of MACs in int8, the costliest
layers, what NetAdapt did, and which layers float_islands kept in float."""

from __future__ import annotations


def _step_infos(report: dict) -> list[dict]:
    steps = report.get("steps") or (report.get("chain") or {}).get("steps") or []
    return [step.get("info") or {} for step in steps]


def step_facts(report: dict) -> tuple[float | None, list[str]]:
    """(int8 MACs share, the 3 costliest layers) from a build report's chain steps' info: the last
    `int8_macs_share` the quantizers put there, the worst `sensitivity` rows (else the lowest
    `worst_layers_sqnr` rows), each named with its SQNR."""
    share, worst = None, []
    for info in _step_infos(report):
        if info.get("int8_macs_share") is not None:
            share = float(info["int8_macs_share"])
        rows = info.get("sensitivity") or sorted(info.get("worst_layers_sqnr") or [],
                                                  key=lambda r: float(r.get("sqnr_db", 0.0)))
        if rows:
            worst = [f"{r.get('layer') or r.get('node')} ({float(r['sqnr_db']):.1f} dB)" if "sqnr_db" in r
                     else str(r.get("layer") or r.get("node")) for r in rows[:3]]
    return share, worst


def pruning_note(report: dict) -> str:
    """One line on a NetAdapt step from a build report, e.g. "stopped: floor (...); 1.00 of the
    original MACs": a pruned candidate whose rounds were all undone is the unpruned model."""
    for info in _step_infos(report):
        if "stopped" in info and isinstance(info.get("original"), dict) and isinstance(info.get("final"), dict):
            by = info.get("by", "macs")
            left = info["final"].get(by) / info["original"][by] if info["original"].get(by) else None
            return f"stopped: {info['stopped']}" + (f"; {left:.2f} of the original {by}" if left is not None else "")
    return ""


def float_islands_note(report: dict) -> str:
    """One line on ort_quantize's float_islands choice from a build report, e.g. "3 leading
    layer(s) in float: 3.1 against 3.3 ms all-int8"; "" when it was not on."""
    for info in _step_infos(report):
        islands = info.get("float_islands")
        if isinstance(islands, dict):
            return str(islands.get("why", ""))
    return ""
