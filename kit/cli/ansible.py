"""`edgekit ansible export | run | collect`: Ansible as the rollout engine past one host."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from kit.cli._ui import console, print_json, stdout

_JSON = typer.Option(False, "--json", help="Print one JSON document.")


def register(app: typer.Typer) -> None:
    ans = typer.Typer(help="Roll out through Ansible: export a playbook + role, run it, collect its results.",
                      no_args_is_help=True)
    app.add_typer(ans, name="ansible")

    @ans.command("export")
    def export_cmd(
        bundle: Path = typer.Argument(..., help="Bundle folder made by 'edgekit package'."),
        group: str = typer.Option(..., "--group", "-g", help="Device group (the play's hosts)."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder to write the Ansible project into."),
        canary: int = typer.Option(1, "--canary", min=1, help="Hosts in the first batch (serial)."),
        batch_size: int = typer.Option(10, "--batch-size", min=1, help="Hosts per batch after the canaries."),
        max_fail_percentage: int = typer.Option(0, "--max-fail-percentage", min=0, max=100,
                                                help="Stop the play when more than this % of a batch failed."),
        health_runs: int = typer.Option(20, "--health-runs", min=2, help="Timed runs in the health gate."),
        latency_budget_ms: Optional[float] = typer.Option(None, "--latency-budget-ms",
                                                          help="Health gate budget (default: the recipe's)."),
        latency_stat: str = typer.Option("p50_ms", "--latency-stat", help="p50_ms | p90_ms | p99_ms | mean_ms"),
        threads: int = typer.Option(1, "--threads", min=1),
        forks: int = typer.Option(32, "--forks", min=1, help="Ansible forks (hosts handled at once)."),
        deadline_s: float = typer.Option(300.0, "--deadline-s", min=1, help="Deadline of one agent step."),
        force: bool = typer.Option(False, "--force", help="Replace a non-empty --out folder."),
        inventory: Optional[Path] = typer.Option(None, "--inventory", "-i", help="Kit inventory YAML."),
    ):
        """Write playbook, role, inventory and ansible.cfg that roll BUNDLE out like 'edgekit rollout'."""
        from kit.ansible.export import export_playbook
        from kit.devices.inventory import Inventory
        from kit.fleet.options import RolloutOptions

        opts = RolloutOptions(canary=canary, batch_size=batch_size, health_runs=health_runs,
                              latency_budget_ms=latency_budget_ms, latency_stat=latency_stat, threads=threads,
                              max_parallel=forks, agent_timeout_s=deadline_s)
        entries = Inventory.load(inventory).select(group)
        path = export_playbook(bundle, entries, group, out, options=opts, max_fail_percentage=max_fail_percentage,
                               force=force)
        stdout.print(f"wrote {path}/rollout.yml for {len(entries)} host(s) of {group}; next: edgekit ansible run {path} "
                     f"(or: cd {path} && ansible-playbook rollout.yml), then edgekit ansible collect {path}",
                     soft_wrap=True, markup=False)

    @ans.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def run_cmd(
        ctx: typer.Context,
        export_dir: Path = typer.Argument(..., help="Folder written by 'edgekit ansible export'."),
        collect: bool = typer.Option(True, "--collect/--no-collect", help="Store the results when the play ends."),
        results: Optional[Path] = typer.Option(None, "--results", help="Results store (default: $EDGEKIT_RESULTS)."),
    ):
        """Run the exported playbook with ansible-playbook (extra arguments are passed on), then collect."""
        from kit.ansible.run import run_playbook

        extra: List[str] = list(ctx.args)
        proc = run_playbook(export_dir, extra)
        if collect and (export_dir / "results").is_dir() and any((export_dir / "results").glob("*.json")):
            from kit.ansible.collect import collect as collect_fn

            summary = collect_fn(export_dir, results)
            console.print(f"stored as rollout {summary['rollout_id']} ({summary['status']}), "
                          f"{summary['measurements']} measurement(s) in run {summary['run_id']}")
        if proc.returncode:
            raise typer.Exit(1)

    @ans.command("collect")
    def collect_cmd(
        export_dir: Path = typer.Argument(..., help="Folder written by 'edgekit ansible export' (after a play)."),
        results: Optional[Path] = typer.Option(None, "--results", help="Results store (default: $EDGEKIT_RESULTS)."),
        as_json: bool = _JSON,
    ):
        """Store each host's agent JSON from the play as a rollout record and gate measurements."""
        from kit.ansible.collect import collect as collect_fn

        summary = collect_fn(export_dir, results)
        if as_json:
            print_json(summary)
            return
        for d in summary["devices"]:
            stdout.print(f"{d['device']}: {d['status']}" + (f" ({d['error']})" if d.get("error") else ""),
                         soft_wrap=True, markup=False)
        stdout.print(f"rollout {summary['rollout_id']}: {summary['status']}; {summary['measurements']} "
                     f"measurement(s) stored in run {summary['run_id']}")
