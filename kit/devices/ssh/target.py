"""Where an inventory entry really points, as OpenSSH would resolve it: ~/.ssh/config (HostName,
Port, User, IdentityFile, ProxyCommand, UserKnownHostsFile) applied to the entry."""

from __future__ import annotations

import getpass
import os
from pathlib import Path
from typing import NamedTuple

import paramiko

from kit.config import config_dir
from kit.devices.entry import DeviceEntry
from kit.errors import DeviceError, EdgeKitError


class SshTarget(NamedTuple):
    host: str
    port: int
    user: str
    keys: list[str]  # private key files to offer; empty = ssh-agent and ~/.ssh/id_*
    config: dict     # the ssh config options for this host (lower-case keys, as paramiko gives them)


def default_ssh_config() -> Path:
    return Path.home() / ".ssh" / "config"


def _ssh_config(host: str, path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return dict(paramiko.SSHConfig.from_path(str(path)).lookup(host))
    except Exception as e:  # a broken config file should say which file
        raise EdgeKitError(f"{path}: cannot parse ({e}); fix the file or pass ssh_config=") from e


def resolve_target(entry: DeviceEntry, ssh_config: str | Path | None = None) -> SshTarget:
    """The entry's own fields win; ~/.ssh/config (or `ssh_config`) fills in the rest."""
    cfg = _ssh_config(entry.host, Path(ssh_config) if ssh_config else default_ssh_config())
    host = cfg.get("hostname", entry.host)
    port = entry.port if entry.port != 22 else int(cfg.get("port", 22))
    user = entry.user or cfg.get("user") or getpass.getuser()
    if entry.key:
        keys = [os.path.expanduser(entry.key)]
        if not os.path.isfile(keys[0]):
            raise DeviceError(entry.name, f"key file {keys[0]} not found; fix 'key' in the inventory")
    else:
        keys = [os.path.expanduser(k) for k in cfg.get("identityfile", []) if os.path.isfile(os.path.expanduser(k))]
    return SshTarget(host, port, user, keys, cfg)


def known_hosts_files(entry: DeviceEntry, cfg: dict) -> list[Path]:
    """The entry's own known_hosts, else ~/.ssh/known_hosts, UserKnownHostsFile and what
    `edgekit devices trust` records (config_dir()/known_hosts)."""
    if entry.known_hosts:
        return [Path(os.path.expanduser(entry.known_hosts))]
    files = [Path.home() / ".ssh" / "known_hosts"]
    for f in (cfg.get("userknownhostsfile") or "").split():
        files.append(Path(os.path.expanduser(f)))
    files.append(config_dir() / "known_hosts")
    return files
