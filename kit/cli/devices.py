"""`edgekit devices add | list | remove | check | trust`: the device inventory and enrolment."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from kit.cli._ui import console, print_json, stdout
from kit.errors import EdgeKitError

_INVENTORY = typer.Option(None, "--inventory", "-i", help="Inventory YAML (default: <config dir>/devices.yaml).")
_JSON = typer.Option(False, "--json", help="Print one JSON document instead of a table.")


class ChecksFailed(EdgeKitError):
    exit_code = 1  # "some devices are not ready", distinct from a usage error (2)


def _devices_table(inv) -> Table:
    table = Table(title=f"devices in {inv.path}")
    for col in ("name", "host", "port", "user", "kind", "groups", "python", "home"):
        table.add_column(col)
    for e in inv.devices.values():
        table.add_row(e.name, e.host, str(e.port), e.user or "", e.kind + (" (emulated)" if e.emulated else ""),
                      ",".join(e.groups), e.python, e.home)
    return table


def _check_table(results) -> Table:
    table = Table(title="device check")
    for col in ("device", "status", "s", "arch", "cores", "RAM MB", "runtimes / error"):
        table.add_column(col)
    for r in results:
        if r.ok:
            info = r.info or {}
            rts = ", ".join(f"{k} {v.get('version', '') if isinstance(v, dict) else v}"
                            for k, v in (info.get("runtimes") or {}).items()
                            if v and (not isinstance(v, dict) or v.get("available", True)))
            table.add_row(r.name, "[green]ok", f"{r.seconds:.1f}", str(info.get("arch")), str(info.get("cores")),
                          str(info.get("ram_mb")), rts)
        else:
            table.add_row(r.name, "[red]FAILED", f"{r.seconds:.1f}", "", "", "", "see below")
    return table


def register(app: typer.Typer) -> None:
    devices = typer.Typer(help="Devices: inventory, host keys and health checks.", no_args_is_help=True)
    app.add_typer(devices, name="devices")

    @devices.command("add")
    def add(
        name: str = typer.Argument(..., help="A short name for the device."),
        host: str = typer.Argument(..., help="Address, or a Host name from ~/.ssh/config."),
        port: int = typer.Option(22, min=1, max=65535),
        user: Optional[str] = typer.Option(None, help="SSH user (default: ~/.ssh/config, else yours)."),
        key: Optional[str] = typer.Option(None, help="Private key file (default: ~/.ssh/config, ssh-agent, ~/.ssh/id_*)."),
        kind: str = typer.Option("linux", help="Device kind, e.g. rpi5, jetson-orin, android."),
        python: str = typer.Option("python3", help="The device's Python for the agent."),
        home: str = typer.Option("~/.edgekit", help="The agent's home folder on the device."),
        group: List[str] = typer.Option([], "--group", "-g", help="Group(s) to put the device in (repeatable)."),
        emulated: bool = typer.Option(False, help="The device is an emulator (figures are not real hardware's)."),
        forced_command: bool = typer.Option(False, "--forced-command", help="Our key is pinned to the forced-command agent."),
        replace: bool = typer.Option(False, help="Overwrite a device of the same name."),
        inventory: Optional[Path] = _INVENTORY,
    ):
        """Add a device to the inventory (then: edgekit devices trust NAME)."""
        from kit.devices.inventory import DeviceEntry, Inventory

        inv = Inventory.load_or_new(inventory)
        inv.add(DeviceEntry(name=name, host=host, port=port, user=user, key=key, kind=kind, python=python, home=home,
                            groups=list(group), emulated=emulated, forced_command=forced_command), replace=replace)
        path = inv.save(inventory)
        console.print(f"added {name} ({host}:{port}) to {path}; next: edgekit devices trust {name}")

    @devices.command("remove")
    def remove(name: str, inventory: Optional[Path] = _INVENTORY):
        """Remove a device from the inventory."""
        from kit.devices.inventory import Inventory

        inv = Inventory.load(inventory)
        inv.remove(name)
        inv.save()
        console.print(f"removed {name} from {inv.path}")

    @devices.command("list")
    def list_(inventory: Optional[Path] = _INVENTORY, as_json: bool = _JSON):
        """List the inventory's devices."""
        from dataclasses import asdict

        from kit.devices.inventory import Inventory

        inv = Inventory.load(inventory)
        if as_json:
            print_json({"inventory": inv.path, "devices": [asdict(e) for e in inv.devices.values()]})
        else:
            stdout.print(_devices_table(inv))

    @devices.command("check")
    def check(
        target: str = typer.Argument("all", help="Device, group, 'all' or a comma-separated mix."),
        timeout: float = typer.Option(60.0, min=1, help="Seconds for the agent's answer."),
        parallel: int = typer.Option(16, "--parallel", min=1, help="Devices checked at once (at most 8 per sshd)."),
        inventory: Optional[Path] = _INVENTORY,
        as_json: bool = _JSON,
    ):
        """Connect to each device (in parallel), install the agent if needed and run `info`; exit 1 if any failed."""
        from kit.devices.inventory import Inventory
        from kit.fleet.check import check_devices

        entries = Inventory.load(inventory).select(target)
        with console.status(f"checking {len(entries)} device(s), {min(parallel, len(entries))} at once"):
            results = check_devices(entries, timeout=timeout, max_parallel=parallel)
        failed = [r.name for r in results if not r.ok]
        if as_json:
            print_json({"ok": not failed, "devices": [r.to_dict() for r in results]})
        else:
            stdout.print(_check_table(results))
            for r in results:
                if not r.ok:  # whole lines, not wrapped in a cell: they say what to do
                    stdout.print(f"{r.name}: {r.error}", soft_wrap=True, markup=False)
        if failed:
            raise ChecksFailed(f"{len(failed)} of {len(results)} device(s) failed the check: {', '.join(failed)}")

    @devices.command("trust")
    def trust(
        name: str = typer.Argument(..., help="Device name from the inventory."),
        fingerprint: Optional[str] = typer.Option(None, help="Expected SHA256:... fingerprint; refuse anything else."),
        yes: bool = typer.Option(False, "--yes", "-y", help="Record without asking (after printing the fingerprint)."),
        replace: bool = typer.Option(False, help="Replace a different key already recorded (a reinstalled device)."),
        inventory: Optional[Path] = _INVENTORY,
    ):
        """Show the device's host key fingerprint and record the key in <config dir>/known_hosts."""
        from kit.devices.enrol import fetch_host_key, known_hosts_file, record_host_key
        from kit.devices.inventory import Inventory
        from kit.errors import HostKeyRejected

        entry = Inventory.load(inventory).get(name)
        where, key = fetch_host_key(entry)
        stdout.print(f"{name}: {where} offers {key.get_name()} key {key.fingerprint}")
        if fingerprint and fingerprint.strip() != key.fingerprint:
            raise EdgeKitError(f"device {name}: host key fingerprint {key.fingerprint} differs from the expected "
                                            f"{fingerprint}; do not trust it until you know why")
        if not fingerprint and not yes:
            if not typer.confirm("Does this match the device's key (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on it)?"):
                raise typer.Abort()
        known_hosts = known_hosts_file(entry)
        added = record_host_key(known_hosts, where, key, replace=replace)
        stdout.print(f"{'recorded' if added else 'already trusted'} in {known_hosts}")
