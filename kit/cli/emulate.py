"""`edgekit emulate-pi build|start|stop|status`: an aarch64 Raspberry Pi under qemu, reachable over SSH."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from kit.cli._ui import console, print_json, stdout
from kit.errors import EdgeKitError


def _log_progress(label: str, done: int, total: int) -> None:
    # Build steps take minutes each and have no inner progress: one log line per step says more than a bar.
    console.log(f"[cyan][{done}/{total}][/cyan] {label}")


def register(app: typer.Typer) -> None:
    pi = typer.Typer(help="An emulated Raspberry Pi (aarch64 Debian under qemu-user) to deploy to over SSH. Needs root.",
                     no_args_is_help=True)
    app.add_typer(pi, name="emulate-pi")

    @pi.command("build")
    def build(force: bool = typer.Option(False, "--force", help="Rebuild even if the cached root file system matches.")):
        """Build the aarch64 root file system once (~10 min cold); later calls reuse the cache."""
        from kit.testbed.pi import build_rootfs

        info = build_rootfs(force=force, progress=_log_progress)
        how = f"built in {info.build_s:.0f} s" if info.built else f"cached (cold build took {info.recorded_build_s:.0f} s)"
        stdout.print(f"root file system {info.key}: {how}")
        stdout.print(f"path:     {info.path}")
        stdout.print(f"runtimes: {', '.join(f'{k} {v}' for k, v in info.runtimes.items())} (python {info.python}, aarch64)")

    @pi.command("start")
    def start(
        name: str = typer.Option("pi-emu", "--name", help="Device name in the inventory."),
        cpu_quota: Optional[float] = typer.Option(None, "--cpu-quota", min=0.01,
                                                  help="Slow-device profile: share of one core (cgroup cpu quota), e.g. 0.25."),
        inventory: Optional[Path] = typer.Option(None, "--inventory", "-i", help="Inventory file (default: the kit's devices.yaml)."),
        no_register: bool = typer.Option(False, "--no-register", help="Do not add the device to an inventory."),
        board: str = typer.Option("pi5", "--board", help="pi5 (qemu cpu cortex-a76) or pi4 (cortex-a72)."),
        trust: Optional[List[Path]] = typer.Option(None, "--trust",
                                                   help="Public key(s) the device agent accepts (default: the kit's signing key)."),
    ):
        """Start the emulated Pi: its own aarch64 sshd on a free 127.0.0.1 port, registered with emulated: true."""
        from kit.testbed.pi import start_pi

        if board not in ("pi4", "pi5"):
            raise EdgeKitError(f"--board {board!r}: choose pi4 or pi5")
        p = start_pi(name, cpu_quota=cpu_quota, inventory=inventory, register=not no_register,
                     trusted_keys=trust, progress=_log_progress, board=board)
        stdout.print(f"{p.name}: root@127.0.0.1:{p.port} (sshd up in {p.start_s:.1f} s, pid {p.pid})")
        stdout.print(f"key:         {p.client_key}")
        stdout.print(f"known_hosts: {p.known_hosts}")
        if p.inventory:
            stdout.print(f"inventory:   {p.inventory} (emulated: true)")
        if not p.trusted_keys:
            console.print("[yellow]no signing key trusted on the device: run 'edgekit keys init' before start, or pass --trust")

    @pi.command("stop")
    def stop(name: str = typer.Option("pi-emu", "--name")):
        """Stop the emulated Pi and undo what start made (processes, mounts, binfmt handler, cgroup, inventory entry)."""
        from kit.testbed.pi import stop_pi

        stdout.print(f"{name}: stopped" if stop_pi(name) else f"{name}: not running (nothing left to clean)")

    @pi.command("status")
    def status(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables.")):
        """Cached root file systems and running emulated Pis."""
        from kit.testbed.pi import status as get_status

        st = get_status()
        if as_json:
            print_json(st)
            return
        _render_status(st)


def _render_status(st: dict) -> None:
    t = Table(title=f"root file systems in {st['cache']}")
    for col in ("key", "current", "cold build s", "built at", "runtimes"):
        t.add_column(col)
    for r in st["rootfs"]:
        t.add_row(r["key"], "yes" if r["current"] else "", f"{r['build_s']:.0f}", r["built_at"] or "",
                  ", ".join(f"{k} {v}" for k, v in r["runtimes"].items()))
    stdout.print(t)
    t = Table(title="running")
    for col in ("name", "address", "pid", "start s", "cpu quota", "inventory"):
        t.add_column(col)
    for r in st["running"]:
        t.add_row(r["name"], f"127.0.0.1:{r['port']}", str(r["pid"]), f"{r['start_s']:.1f}",
                  "" if r["cpu_quota"] is None else str(r["cpu_quota"]), r["inventory"] or "")
    stdout.print(t)
