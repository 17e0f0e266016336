"""What the emulated Pi needs from the host: root, the tools, where its files live, running a step."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from kit.errors import EdgeKitError

QEMU = Path("/usr/bin/qemu-aarch64-static")


def cache_dir() -> Path:
    """Cached root file systems: $EDGEKIT_CACHE/pi-rootfs (default ~/.cache/edgekit/pi-rootfs)."""
    env = os.environ.get("EDGEKIT_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "edgekit") / "pi-rootfs"


def runs_dir() -> Path:
    """One folder per running Pi (state.json, keys, overlay layers), beside the rootfs cache."""
    return cache_dir().parent / "pi-run"


def require_tools() -> None:
    if os.geteuid() != 0:
        raise EdgeKitError("emulate-pi: needs root (debootstrap, chroot, binfmt_misc, mount namespaces); run it as root")
    missing = [t for t in ("debootstrap", "unshare", "chroot", "ssh-keygen") if shutil.which(t) is None]
    if not QEMU.exists():
        missing.append(str(QEMU))
    if missing:
        raise EdgeKitError(f"emulate-pi: missing {', '.join(missing)}; "
                           "apt-get install qemu-user-static debootstrap openssh-client util-linux")


def run_tool(cmd: list[str], what: str, timeout: float = 3600, **kw) -> subprocess.CompletedProcess:
    """Run one build/start step; a failure becomes one EdgeKitError line with the tool's last words."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise EdgeKitError(f"emulate-pi: {what} failed (exit {proc.returncode}): {' | '.join(tail)[:400]}")
    return proc
