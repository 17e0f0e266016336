"""The slow-device profile: a cgroup CPU quota the Pi's sshd and every session in it inherit."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kit.errors import EdgeKitError

PERIOD_US = 100_000


def make_cgroup(name: str, cpu_quota: float) -> Path:
    """A cgroup v1 (or v2) CPU quota: cpu_quota=0.25 lets the whole device use a quarter of one core."""
    if not 0.01 <= cpu_quota <= 64:
        raise EdgeKitError(f"emulate-pi: cpu quota {cpu_quota} is out of range; give a share of one core, e.g. 0.25")
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.cfs_quota_us").exists():
        cg = v1 / f"edgekit-{name}"
        cg.mkdir(exist_ok=True)
        (cg / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (cg / "cpu.cfs_quota_us").write_text(str(int(cpu_quota * PERIOD_US)))
        return cg
    v2 = Path("/sys/fs/cgroup")
    if (v2 / "cgroup.controllers").exists() and "cpu" in (v2 / "cgroup.controllers").read_text().split():
        cg = v2 / f"edgekit-{name}"
        cg.mkdir(exist_ok=True)
        (cg / "cpu.max").write_text(f"{int(cpu_quota * PERIOD_US)} {PERIOD_US}")
        return cg
    raise EdgeKitError("emulate-pi: no cgroup cpu controller here (/sys/fs/cgroup/cpu or cgroup v2 cpu.max); "
                       "start without --cpu-quota")


def join_cgroup(cg: Path) -> None:
    """Move the calling process into `cg` (run in the child before exec)."""
    (cg / "cgroup.procs").write_text(str(os.getpid()))


def remove_cgroup(cg: str | None) -> None:
    if not cg:
        return
    for _ in range(50):  # the kernel refuses rmdir until the last task has left
        try:
            os.rmdir(cg)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.1)
