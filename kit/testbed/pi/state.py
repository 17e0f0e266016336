"""A running emulated Pi as recorded on disk: <runs dir>/<name>/state.json, and which are alive."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kit.testbed.pi.host import runs_dir

DEFAULT_NAME = "pi-emu"


@dataclass
class EmulatedPi:
    name: str
    port: int
    pid: int                  # the `unshare` process; its child sshd is PID 1 of the namespace
    run_dir: str
    rootfs: str
    rootfs_key: str
    client_key: str
    known_hosts: str
    start_s: float            # seconds from launching the namespace to sshd's SSH banner
    cpu_quota: float | None = None
    cgroup: str | None = None
    inventory: str | None = None
    trusted_keys: list[str] = field(default_factory=list)
    board: str = "pi5"
    cpu: str | None = None    # the qemu CPU model every process of the device runs on (QEMU_CPU)

    def entry(self):
        """The inventory entry the kit connects with (kit.devices.DeviceEntry)."""
        from kit.devices import DeviceEntry

        return DeviceEntry(name=self.name, host="127.0.0.1", port=self.port, user="root", key=self.client_key,
                           kind="rpi-emulated", python="python3", home="~/.edgekit", groups=["emulated"],
                           vars={"rootfs": self.rootfs_key, "cpu_quota": self.cpu_quota,
                                 "emulator": "qemu-aarch64-static (user mode)",
                                 "board": self.board, "qemu_cpu": self.cpu},
                           emulated=True, known_hosts=self.known_hosts)

    def to_dict(self) -> dict:
        return asdict(self)


def namespace_alive(pid: int) -> bool:
    """True if pid is still our `unshare` (guards against a recycled PID)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return bool(cmd) and cmd[0].endswith(b"unshare") and ") Z " not in stat


def _state_path(name: str) -> Path:
    return runs_dir() / name / "state.json"


def write_state(pi: EmulatedPi) -> None:
    path = _state_path(pi.name)
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(pi.to_dict(), indent=2))
    os.replace(tmp, path)  # a reader sees the old state or the new one, never half


def load_pi(name: str = DEFAULT_NAME) -> EmulatedPi | None:
    path = _state_path(name)
    if not path.exists():
        return None
    return EmulatedPi(**json.loads(path.read_text()))


def running() -> list[EmulatedPi]:
    """The emulated Pis whose state folder exists and whose namespace process is alive."""
    out = []
    if runs_dir().exists():
        for d in sorted(runs_dir().iterdir()):
            pi = load_pi(d.name)
            if pi is not None and namespace_alive(pi.pid):
                out.append(pi)
    return out
