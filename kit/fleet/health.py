"""The health gate a freshly activated version must pass on its device, and where its latency
budget comes from (pure functions of the agent's bench result and the bundle's manifest)."""

from __future__ import annotations

from kit.fleet.options import RolloutOptions


def latency_budget(bundle, opts: RolloutOptions) -> float | None:
    """The option wins; else the recipe budget the packager recorded in the manifest, if any."""
    if opts.latency_budget_ms is not None:
        return float(opts.latency_budget_ms)
    m = bundle.manifest
    for holder in (m.get("budget"), (m.get("recipe") or {}).get("budget") if isinstance(m.get("recipe"), dict) else None):
        if isinstance(holder, dict) and holder.get("latency_ms") is not None:
            return float(holder["latency_ms"])
    return None


def health_gate(result: dict, budget_ms: float | None, stat: str) -> str | None:
    """None if the bench result passes, else why not (one line)."""
    check = result.get("reference_check") or {}
    if not check.get("passed"):
        why = check.get("reason") or f"max_abs_err {check.get('max_abs_err')} > atol {check.get('atol')}"
        return f"health gate: reference check failed ({why})"
    if budget_ms is not None:
        value = (result.get("latency") or {}).get(stat)
        if value is None:
            return f"health gate: the agent reported no {stat}"
        if value > budget_ms:
            return f"health gate: latency {stat} {value:.3f} ms exceeds the budget {budget_ms:g} ms"
    return None
