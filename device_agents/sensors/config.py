"""Where sensors are read from. Real devices use /sys, /proc and `vcgencmd`; tests point the
same code at a recorded tree. Set only from the device's environment, never from bench options
sent over the network: a command path chosen by the host would be a remote shell."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SensorConfig:
    sys_root: str = "/sys"
    proc_root: str = "/proc"
    vcgencmd: tuple[str, ...] = ("vcgencmd",)  # argv prefix, run without a shell
    command_timeout_s: float = 2.0
    env: dict = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def from_env(cls, environ=None) -> "SensorConfig":
        environ = os.environ if environ is None else environ
        vc = environ.get("EDGEKIT_VCGENCMD")
        return cls(sys_root=environ.get("EDGEKIT_SYSFS_ROOT", "/sys"),
                   proc_root=environ.get("EDGEKIT_PROCFS_ROOT", "/proc"),
                   vcgencmd=(vc,) if vc else ("vcgencmd",))

    def sys(self, *parts: str) -> str:
        return os.path.join(self.sys_root, *parts)

    def proc(self, *parts: str) -> str:
        return os.path.join(self.proc_root, *parts)

    def run_vcgencmd(self, *args: str) -> str:
        """stdout of `vcgencmd ARGS`; raises OSError/SubprocessError/ValueError when unusable."""
        out = subprocess.run([*self.vcgencmd, *args], capture_output=True, timeout=self.command_timeout_s, check=True)
        # The firmware mailbox answers with NUL-separated text on some releases.
        return out.stdout.decode("utf-8", "replace").replace("\x00", "\n")


def read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def read_int(path: str) -> int | None:
    text = read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
