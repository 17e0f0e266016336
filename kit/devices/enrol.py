"""Enrolment: which host key a device has and recording it, which keys its agent trusts, and the
hardened authorized_keys line for the forced-command agent.

paramiko is imported only by fetch_host_key: `from kit.devices.enrol import default_trusted_keys`
stays light (the testbed and the local device use it).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import shlex
import socket
from pathlib import Path

import device_agents
from kit.config import config_dir
from kit.devices.entry import DeviceEntry
from kit.errors import DeviceUnreachable, EdgeKitError


def known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH names host:port in known_hosts."""
    return host if port == 22 else f"[{host}]:{port}"


def fingerprint(key) -> str:
    """'ssh-ed25519 SHA256:...' for a paramiko PKey."""
    return f"{key.get_name()} {key.fingerprint}"


def default_trusted_keys() -> list[Path]:
    """Public keys a device agent trusts by default: the kit's signing key(s) (kit.package.signing)."""
    from kit.package.signing import public_key_paths  # late: only when an agent is set up

    return public_key_paths()


def authorized_keys_line(public_key: str, *, python: str, home: str, agent_version: str = device_agents.AGENT_VERSION) -> str:
    """The hardened authorized_keys line that pins `public_key` to the forced-command agent.

    `home` must be the absolute agent home on the device. sshd runs the command with the user's
    shell, but the command is fixed here (not from the network); what the client asks for arrives
    only in SSH_ORIGINAL_COMMAND, which device_agents/forced.py validates without a shell.
    """
    agent_dir = posixpath.join(home, "agent", agent_version)
    cmd = (f"env EDGEKIT_HOME={shlex.quote(home)} PYTHONPATH={shlex.quote(agent_dir)} "
           f"{shlex.quote(python)} -m device_agents.forced")
    if '"' in cmd:
        raise EdgeKitError(f"forced command {cmd!r}: paths must not contain double quotes")
    return f'restrict,command="{cmd}" {" ".join(public_key.split()[:2])}'


def fetch_host_key(entry: DeviceEntry, timeout: float = 15.0, ssh_config: str | Path | None = None) -> tuple[str, object]:
    """The host key a device offers, without authenticating: (known_hosts name, paramiko PKey).
    Raises DeviceUnreachable when nothing answers there."""
    import paramiko

    from kit.devices.ssh.target import resolve_target

    target = resolve_target(entry, ssh_config)
    where = known_hosts_name(target.host, target.port)
    sock = None
    try:
        sock = paramiko.ProxyCommand(target.config["proxycommand"]) if target.config.get("proxycommand") else \
            socket.create_connection((target.host, target.port), timeout=timeout)
        transport = paramiko.Transport(sock)
        transport.banner_timeout = timeout
        try:
            transport.start_client(timeout=timeout)
            return where, transport.get_remote_server_key()
        finally:
            transport.close()
    except (paramiko.SSHException, OSError, EOFError) as e:
        raise DeviceUnreachable(entry.name, f"cannot read the host key of {where} ({type(e).__name__}: {e}); "
                                            f"check that the device is on and sshd listens there") from None
    finally:
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.close()


def known_hosts_file(entry: DeviceEntry) -> Path:
    """Where `edgekit devices trust` records the device's host key: the entry's own known_hosts,
    else config_dir()/known_hosts (both are read when connecting)."""
    return Path(entry.known_hosts).expanduser() if entry.known_hosts else config_dir() / "known_hosts"


def record_host_key(known_hosts: Path, where: str, key, replace: bool = False) -> bool:
    """Add `where key` to a known_hosts file (atomically). False if that exact key is already there.

    A different key already recorded for `where` is refused unless replace=True (a changed key is
    what an attack looks like).
    """
    known_hosts = Path(known_hosts)
    lines = known_hosts.read_text().splitlines() if known_hosts.is_file() else []
    keep, line_new = [], f"{where} {key.get_name()} {key.get_base64()}"
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and where in parts[0].split(","):
            if parts[1] == key.get_name() and parts[2] == key.get_base64():
                return False
            if parts[1] == key.get_name() and not replace:
                raise EdgeKitError(f"{known_hosts}: {where} is recorded with a DIFFERENT {parts[1]} key; if the device was "
                                   f"reinstalled, run 'edgekit devices trust NAME --replace' after checking the fingerprint")
            if parts[1] == key.get_name():
                continue
        keep.append(line)
    keep.append(line_new)
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    tmp = known_hosts.with_name(known_hosts.name + f".{secrets.token_hex(4)}.part")
    tmp.write_text("\n".join(keep) + "\n")
    os.replace(tmp, known_hosts)
    return True
