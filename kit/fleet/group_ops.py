"""Whole-group agent verbs outside a rollout: what every device runs, and switching every device
back. Each returns one JSON-ready row per device (kit.fleet.GroupResult.rows())."""

from __future__ import annotations

from kit.fleet.options import RolloutOptions


def _rows(entries: list, fn, connect, options: RolloutOptions | None) -> list[dict]:
    return (options or RolloutOptions(retries=1)).group(entries, connect=connect).run(fn).rows()


def fleet_status(entries: list, model_name: str | None = None, *, connect=None, options: RolloutOptions | None = None) -> list[dict]:
    """What each device runs: rows {device, ok, models: {name: {current, previous, ...}} | error}."""
    args = ["status"] + (["--name", model_name] if model_name else [])
    return _rows(entries, lambda dev: {"models": dev.agent(args, 60)["models"]}, connect, options)


def rollback_group(entries: list, model_name: str, *, expect_current: str | None = None, connect=None,
                   options: RolloutOptions | None = None) -> list[dict]:
    """Switch every device's `model_name` back to its previous version; rows {device, ok, current, previous, changed}."""
    args = ["rollback", "--name", model_name] + (["--expect-current", expect_current] if expect_current else [])
    return _rows(entries, lambda dev: dev.agent(args, 60), connect, options)
