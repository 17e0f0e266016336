"""The device inventory: which devices exist, how to reach them, and which groups they belong to.

A YAML file (default: config_dir()/devices.yaml)::

    devices:
      pi5-lab:
        host: 192.168.1.40        # a name from ~/.ssh/config works too
        port: 22
        user: pi
        key: ~/.ssh/id_ed25519    # optional: else ~/.ssh/config, ssh-agent, ~/.ssh/id_*
        kind: rpi5
        python: python3           # the device's interpreter for the agent
        home: ~/.edgekit          # the agent's home on the device
        groups: [canary, pis]
        vars: {cooldown_c: 60}
    groups:                       # optional: extra membership, Ansible-style
      pis: [pi5-lab]

An Ansible YAML inventory (``all: {hosts: ..., children: ...}`` with ansible_host/ansible_port/
ansible_user/ansible_ssh_private_key_file/ansible_python_interpreter) is read as well, so an
existing fleet inventory can be pointed at directly. The name "local" is the built-in device.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kit.config import config_dir
from kit.devices.ansible import parse_ansible
from kit.devices.entry import LOCAL, DeviceEntry
from kit.errors import EdgeKitError

__all__ = ["LOCAL", "DeviceEntry", "Inventory", "connect", "import_ansible"]


@dataclass
class Inventory:
    devices: dict[str, DeviceEntry] = field(default_factory=dict)
    path: Path | None = None

    @staticmethod
    def default_path() -> Path:
        return config_dir() / "devices.yaml"

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Inventory":
        """Read an inventory; a missing default file is an empty inventory, a missing named file an error."""
        explicit = path is not None
        path = Path(path) if explicit else cls.default_path()
        if not path.exists():
            if explicit:
                raise EdgeKitError(f"inventory {path}: no such file; create it with 'edgekit devices add'")
            return cls({}, path)
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise EdgeKitError(f"inventory {path}: not valid YAML ({' '.join(str(e).split())[:160]})") from e
        if not isinstance(doc, dict):
            raise EdgeKitError(f"inventory {path}: expected a mapping with 'devices:' at the top")
        if "devices" not in doc and "all" in doc:
            return cls({e.name: e for e in parse_ansible(path)}, path)
        extra = sorted(set(doc) - {"devices", "groups"})
        if extra:
            raise EdgeKitError(f"inventory {path}: unknown top-level key(s) {', '.join(extra)}; use 'devices:' and 'groups:'")
        devices = {}
        for name, data in (doc.get("devices") or {}).items():
            devices[str(name)] = DeviceEntry.from_dict(str(name), data or {}, str(path))
        for group, members in (doc.get("groups") or {}).items():
            for member in members or []:
                if member not in devices:
                    raise EdgeKitError(f"inventory {path}: group {group!r} names unknown device {member!r}")
                if group not in devices[member].groups:
                    devices[member].groups.append(group)
        return cls(devices, path)

    @classmethod
    def load_or_new(cls, path: str | Path | None = None) -> "Inventory":
        """load(path), or an empty inventory to be saved at `path` when that file does not exist yet."""
        if path is None or Path(path).exists():
            return cls.load(path)
        return cls({}, Path(path))

    def save(self, path: str | Path | None = None) -> Path:
        """Write atomically (temporary file + rename) so a crash never leaves half an inventory."""
        path = Path(path) if path is not None else (self.path or self.default_path())
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"devices": {name: e.to_dict() for name, e in sorted(self.devices.items())}}
        fd, tmp = tempfile.mkstemp(prefix=".devices.", suffix=".part", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                yaml.safe_dump(doc, f, sort_keys=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.path = path
        return path

    def add(self, entry: DeviceEntry, replace: bool = False) -> None:
        if entry.name == LOCAL:
            raise EdgeKitError("device name 'local' is the built-in device; choose another name")
        if entry.name in self.devices and not replace:
            raise EdgeKitError(f"device {entry.name} is already in the inventory; pass --replace to overwrite it")
        self.devices[entry.name] = entry

    def remove(self, name: str) -> None:
        if name not in self.devices:
            raise EdgeKitError(f"device {name}: not in the inventory {self.path}")
        del self.devices[name]

    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for e in self.devices.values():
            for g in e.groups:
                out.setdefault(g, []).append(e.name)
        return out

    def get(self, name: str) -> DeviceEntry:
        if name in self.devices:
            return self.devices[name]
        raise EdgeKitError(f"device {name}: not in the inventory {self.path}; add it with 'edgekit devices add {name} HOST'")

    def select(self, name_or_group: str) -> list[DeviceEntry]:
        """A device name, a group name, 'all', or a comma-separated mix of those; order kept, no repeats."""
        picked: dict[str, DeviceEntry] = {}
        for part in [p.strip() for p in str(name_or_group).split(",") if p.strip()]:
            if part == "all":
                matches = list(self.devices.values())
            elif part in self.devices:
                matches = [self.devices[part]]
            elif part == LOCAL:
                matches = [DeviceEntry(name=LOCAL)]
            else:
                matches = [e for e in self.devices.values() if part in e.groups]
            if not matches:
                raise EdgeKitError(f"{part!r} is neither a device nor a group in the inventory {self.path} "
                                   f"(groups: {', '.join(sorted(self.groups())) or 'none'})")
            for e in matches:
                picked.setdefault(e.name, e)
        if not picked:
            raise EdgeKitError("no device named; give a device or group name")
        return list(picked.values())


def connect(entry_or_name: DeviceEntry | str, inventory: Inventory | None = None, **ssh_options):
    """Open a device: "local" is the built-in LocalDevice, anything else an SshDevice (connected)."""
    if isinstance(entry_or_name, str):
        entry_or_name = DeviceEntry(name=LOCAL) if entry_or_name == LOCAL else (inventory or Inventory.load()).get(entry_or_name)
    if entry_or_name.name == LOCAL:
        from kit.devices.local import LocalDevice

        return LocalDevice(python=None if entry_or_name.python == "python3" else entry_or_name.python)
    from kit.devices.ssh import SshDevice  # late: paramiko only for SSH devices

    return SshDevice(entry_or_name, **ssh_options)


def import_ansible(path: str | Path, inventory: str | Path | None = None, *, replace: bool = False
                   ) -> tuple[list[DeviceEntry], Path]:
    """Add an Ansible inventory's hosts (kit.devices.ansible.parse_ansible) to the kit's inventory,
    saved atomically; all or nothing."""
    entries = parse_ansible(path)
    inv = Inventory.load_or_new(inventory)
    clash = [e.name for e in entries if e.name in inv.devices]
    if clash and not replace:
        raise EdgeKitError(f"{', '.join(clash)} already in the inventory {inv.path}; pass --replace to overwrite them")
    for e in entries:
        inv.add(e, replace=replace)
    return entries, inv.save(inventory)
