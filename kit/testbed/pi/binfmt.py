"""binfmt_misc for aarch64: mounted and registered by hand (the Debian package registers nothing here).

The handler is host-wide and shared by every build and running Pi (whatever their cache folder),
so the kit keeps host-wide bookkeeping in /run: what it changed (the marker), and one holder file
per process that needs the handler (a build: its own PID; a Pi: its namespace PID). The last holder
out (no live holder left) undoes what the kit changed, and nothing it did not.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from kit.errors import EdgeKitError
from kit.testbed.pi.host import run_tool

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_NAME = "qemu-aarch64"
# The same registration Debian's binfmt.d file carries (flags F: the interpreter is opened at
# registration, so it works inside a chroot that has no qemu binary; P: keep argv[0]).
BINFMT_FALLBACK = (r":qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
                   r":\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
                   r":/usr/bin/qemu-aarch64-static:F")
BINFMT_STATE = Path("/run/edgekit-pi")
MARKER = BINFMT_STATE / "binfmt-made.json"


def read_marker() -> dict:
    """What the kit changed: {"mounted": True} and/or {"registered": True}; {} if nothing."""
    try:
        return json.loads(MARKER.read_text())
    except (OSError, ValueError):
        return {}


def binfmt_hold(holder: int) -> None:
    """Record that process `holder` needs the handler (binfmt_release drops it)."""
    (BINFMT_STATE / "holders").mkdir(parents=True, exist_ok=True)
    (BINFMT_STATE / "holders" / str(holder)).touch()


def binfmt_setup(holder: int) -> dict:
    """Make aarch64 ELF files run through qemu for `holder` (a PID); returns what the kit changed."""
    binfmt_hold(holder)
    made = read_marker()
    if not (BINFMT_DIR / "register").exists():
        run_tool(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], "mounting binfmt_misc")
        made["mounted"] = True
    entry = BINFMT_DIR / BINFMT_NAME
    if entry.exists():
        if "F" not in _binfmt_flags(entry):
            raise EdgeKitError(f"emulate-pi: {entry} is registered without the F flag; "
                               f"remove it (echo -1 > {entry}) and retry")
    else:
        line = BINFMT_FALLBACK
        conf = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
        if conf.exists():
            line = conf.read_text().strip()
            if "F" not in line.rsplit(":", 1)[1]:
                line += "F"
        with open(BINFMT_DIR / "register", "w") as f:
            f.write(line)
        made["registered"] = True
    MARKER.write_text(json.dumps(made))
    return made


def _binfmt_flags(entry: Path) -> str:
    for ln in entry.read_text().splitlines():
        if ln.startswith("flags:"):
            return ln.split(":", 1)[1].strip()
    return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and ") Z " in stat.read_text())


def binfmt_release(holder: int) -> bool:
    """Drop `holder`; if no live holder remains, undo what the kit changed. True if it undid it."""
    holders = BINFMT_STATE / "holders"
    (holders / str(holder)).unlink(missing_ok=True)
    live = False
    for h in holders.iterdir() if holders.exists() else []:
        if h.name.isdigit() and _pid_alive(int(h.name)):
            live = True
        else:
            h.unlink(missing_ok=True)  # a holder that died without releasing (a crashed build)
    made = read_marker()
    if live or not made:
        return False
    if made.get("registered") and (BINFMT_DIR / BINFMT_NAME).exists():
        (BINFMT_DIR / BINFMT_NAME).write_text("-1")
    if made.get("mounted") and (BINFMT_DIR / "register").exists():
        subprocess.run(["umount", str(BINFMT_DIR)], capture_output=True)
    MARKER.unlink(missing_ok=True)
    return True


def binfmt_registered() -> bool:
    return (BINFMT_DIR / BINFMT_NAME).exists()
