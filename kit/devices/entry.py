"""One inventory entry: how to reach one device (host, port, user, key, python, home, groups)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields

from kit.errors import EdgeKitError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LOCAL = "local"


@dataclass
class DeviceEntry:
    name: str
    host: str = ""
    port: int = 22
    user: str | None = None
    key: str | None = None
    kind: str = "linux"
    python: str = "python3"
    home: str = "~/.edgekit"
    groups: list[str] = field(default_factory=list)
    vars: dict = field(default_factory=dict)
    emulated: bool = False
    # A known_hosts file for this device only (tests, isolated labs); None = the usual files.
    known_hosts: str | None = None
    # True when the device's authorized_keys pins our key to the forced-command agent
    # (device_agents/forced.py): then only agent verbs are sent, never a command line.
    forced_command: bool = False

    def __post_init__(self):
        if not _NAME.match(self.name or ""):
            raise EdgeKitError(f"device name {self.name!r}: use letters, digits, '.', '_' or '-' (max 64)")
        if self.name != LOCAL and not self.host:
            raise EdgeKitError(f"device {self.name}: no host; give an address or a ~/.ssh/config Host name")
        try:
            self.port = int(self.port)
        except (TypeError, ValueError):
            raise EdgeKitError(f"device {self.name}: port {self.port!r} is not a number") from None
        if not 0 < self.port < 65536:
            raise EdgeKitError(f"device {self.name}: port {self.port} is out of range 1-65535")
        if isinstance(self.groups, str):
            self.groups = [self.groups]
        self.groups = list(self.groups or [])
        self.vars = dict(self.vars or {})

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("name")
        defaults = DeviceEntry(name="x", host="x")
        # Keep the YAML short: only what differs from the defaults.
        return {k: v for k, v in d.items() if k == "host" or v != getattr(defaults, k)}

    @classmethod
    def from_dict(cls, name: str, data: dict, where: str = "inventory") -> "DeviceEntry":
        if not isinstance(data, dict):
            raise EdgeKitError(f"{where}: device {name!r} must be a mapping of host/port/user/...")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise EdgeKitError(f"{where}: device {name!r} has unknown field(s) {', '.join(unknown)}; "
                               f"allowed: {', '.join(sorted(known - {'name'}))}")
        return cls(name=name, **data)
