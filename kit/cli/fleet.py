"""`edgekit rollout | rollback | status` and `edgekit devices import-ansible`: fleet commands.
Parse, call kit.fleet, render; the library does the work (and is imported inside each command)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from kit.cli._ui import console, print_json, stdout

_INVENTORY = typer.Option(None, "--inventory", "-i", help="Inventory YAML (default: <config dir>/devices.yaml).")
_RESULTS = typer.Option(None, "--results", help="Results store (default: $EDGEKIT_RESULTS).")
_GROUP = typer.Option(..., "--group", "-g", help="Device group (or device, or comma-separated mix).")
_STYLE = {"updated": "green", "unchanged": "green", "in_progress": "cyan", "pending": "dim", "skipped": "dim",
          "failed": "red", "unreachable": "red", "rolled_back": "yellow"}


def _entries(inventory: Optional[Path], group: str):
    from kit.devices.inventory import Inventory

    return Inventory.load(inventory).select(group)


def _table(title: str, columns: tuple[str, ...]) -> Table:
    t = Table(title=title)
    for col in columns:
        t.add_column(col, overflow="fold")
    return t


def _rollout_table(states: dict, bundle_id: str, started: float) -> Table:
    from kit.fleet.rollout import version_label

    t = _table(f"rollout of {bundle_id}  ({time.monotonic() - started:.0f} s)",
               ("device", "stage", "status", "runs", "retries", "previous", "note"))
    for d in sorted(states.values(), key=lambda d: d.position):
        style = _STYLE.get(d.status, "")
        t.add_row(d.device, d.stage, f"[{style}]{d.status}" if style else d.status, version_label(d, bundle_id),
                  str(d.attempts), d.previous_bundle_id or "-", (d.error or "")[:120])
    return t


def _rollback_table(name: str, rows: list[dict]) -> Table:
    t = _table(f"rollback of {name}", ("device", "result", "current", "previous"))
    for r in rows:
        if r["ok"]:
            t.add_row(r["device"], "[green]rolled back" if r.get("changed") else "unchanged",
                      r.get("current") or "-", r.get("previous") or "-")
        else:
            t.add_row(r["device"], "[red]FAILED", "", r.get("error", ""))
    return t


def _status_table(rows: list[dict]) -> Table:
    t = _table("fleet status", ("device", "model", "current", "sequence", "previous"))
    for r in rows:
        if not r["ok"]:
            why = "unreachable" if r.get("error", "").startswith("unreachable") else "failed"
            t.add_row(r["device"], "", f"[red]{why}", "", r.get("error", "")[:100])
            continue
        if not r["models"]:
            t.add_row(r["device"], "-", "-", "", "")
        for model, m in sorted(r["models"].items()):
            cur, prev = m.get("current") or {}, m.get("previous") or {}
            t.add_row(r["device"], model, cur.get("bundle_id") or "-", str(cur.get("sequence") or ""),
                      prev.get("bundle_id") or "-")
    return t


def _last_model(results: Optional[Path], group: str) -> str:
    """The model of the group's last rollout (rollback without --name)."""
    from kit.config import results_path
    from kit.errors import EdgeKitError
    from kit.fleet.rollout_state import RolloutState

    with RolloutState(results or results_path()) as st:
        last = st.latest(group)
    if last is None:
        raise EdgeKitError(f"group {group}: no rollout recorded; name the model with --name")
    return last.model_name


def _import_ansible_command(
    file: Path = typer.Argument(..., help="Ansible inventory: INI (hosts file) or YAML."),
    inventory: Optional[Path] = _INVENTORY,
    replace: bool = typer.Option(False, "--replace", help="Overwrite devices already in the inventory."),
):
    """Import hosts, groups and connection vars from an Ansible inventory into the kit's inventory."""
    from kit.devices.inventory import import_ansible

    added, path = import_ansible(file, inventory, replace=replace)
    table = _table(f"imported into {path}", ("device", "host", "port", "user", "groups"))
    for e in added:
        table.add_row(e.name, e.host, str(e.port), e.user or "", ", ".join(e.groups))
    stdout.print(table)


def register(app: typer.Typer) -> None:
    @app.command("rollout")
    def rollout_cmd(
        bundle: Path = typer.Argument(..., help="Bundle folder made by 'edgekit package'."),
        group: str = _GROUP,
        canary: int = typer.Option(1, "--canary", min=1, help="Devices updated first, alone."),
        batch_size: int = typer.Option(10, "--batch-size", min=1, help="Devices per batch after the canaries."),
        max_failures: int = typer.Option(0, "--max-failures", min=0, help="Stop and roll back when failures exceed this."),
        resume: bool = typer.Option(False, "--resume", help="Continue the group's unfinished rollout of this bundle."),
        latency_budget_ms: Optional[float] = typer.Option(None, "--latency-budget-ms",
                                                          help="Health gate latency budget (default: the recipe's)."),
        recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe whose budget.latency_ms is the gate."),
        latency_stat: str = typer.Option("p50_ms", "--latency-stat", help="p50_ms | p90_ms | p99_ms | mean_ms"),
        health_runs: int = typer.Option(20, "--health-runs", min=1, help="Timed runs in the health gate."),
        threads: int = typer.Option(1, "--threads", min=1),
        retries: int = typer.Option(4, "--retries", min=0, help="Retries per step on connection failures."),
        parallel: int = typer.Option(32, "--parallel", min=1, help="Devices handled at once."),
        deadline_s: float = typer.Option(300.0, "--deadline-s", min=1, help="Overall deadline of one agent step."),
        heartbeat_timeout_s: float = typer.Option(20.0, "--heartbeat-timeout-s", min=0,
                                                  help="A device whose agent is silent this long mid-step is dead (0: off)."),
        inventory: Optional[Path] = _INVENTORY,
        results: Optional[Path] = _RESULTS,
        as_json: bool = typer.Option(False, "--json", help="Print the rollout record as one JSON document."),
    ):
        """Staged canary rollout with a health gate; exit 1 if it stopped and rolled back."""
        from rich.live import Live

        from kit.fleet import RolloutOptions, rollout
        from kit.package.bundle import Bundle

        if latency_budget_ms is None and recipe:
            from kit.recipes import load_recipe

            latency_budget_ms = getattr(getattr(load_recipe(recipe), "budget", None), "latency_ms", None)
        b = Bundle.load(bundle)
        opts = RolloutOptions(canary=canary, batch_size=batch_size, max_failures=max_failures,
                              latency_budget_ms=latency_budget_ms, latency_stat=latency_stat, health_runs=health_runs,
                              threads=threads, retries=retries, max_parallel=parallel, agent_timeout_s=deadline_s,
                              heartbeat_timeout_s=heartbeat_timeout_s)
        entries = _entries(inventory, group)
        states: dict = {}
        started = time.monotonic()
        with Live(_rollout_table(states, b.bundle_id, started), console=console, refresh_per_second=4,
                  transient=as_json) as live:
            def progress(d):
                states[d.device] = d
                live.update(_rollout_table(states, b.bundle_id, started))

            result = rollout(b, entries, group, options=opts, store_path=results, resume=resume, progress=progress)
            states.update({d.device: d for d in result.devices})
            live.update(_rollout_table(states, b.bundle_id, started))
        if as_json:
            print_json(result.to_dict())
        else:
            stdout.print(f"rollout {result.rollout_id}: {result.status} ({result.failures} failed of {len(result.devices)})")
        if result.status != "succeeded":
            raise typer.Exit(1)

    @app.command("rollback")
    def rollback_cmd(
        group: str = _GROUP,
        name: Optional[str] = typer.Option(None, "--name", help="Model name (default: the group's last rollout's)."),
        inventory: Optional[Path] = _INVENTORY,
        results: Optional[Path] = _RESULTS,
        as_json: bool = typer.Option(False, "--json", help="Print one row per device as one JSON document."),
    ):
        """Switch each device of the group back to its previous version of the model."""
        from kit.fleet import rollback_group

        name = name or _last_model(results, group)
        rows = rollback_group(_entries(inventory, group), name)
        if as_json:
            print_json(rows)
        else:
            stdout.print(_rollback_table(name, rows))
        if not all(r["ok"] for r in rows):
            raise typer.Exit(1)

    @app.command("status")
    def status_cmd(
        group: str = typer.Argument("all", help="Device, group, 'all' or a comma-separated mix."),
        name: Optional[str] = typer.Option(None, "--name", help="Only this model."),
        inventory: Optional[Path] = _INVENTORY,
        as_json: bool = typer.Option(False, "--json", help="Print one row per device as one JSON document."),
    ):
        """What each device runs: current and previous version of each model."""
        from kit.fleet import fleet_status

        rows = fleet_status(_entries(inventory, group), name)
        if as_json:
            print_json(rows)
        else:
            stdout.print(_status_table(rows))
        if not all(r["ok"] for r in rows):
            raise typer.Exit(1)

    # `edgekit devices import-ansible`: kit/cli/devices.py describes the `devices` group; kit.cli
    # merges this declaration into it by name, whichever module registers first.
    devices = typer.Typer()
    app.add_typer(devices, name="devices")
    devices.command("import-ansible")(_import_ansible_command)
