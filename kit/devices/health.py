"""`check_device(entry)`: is this device ready to measure? Connect, set up the agent, run `info`.

Its own module (not enrol.py) because it opens devices: the SSH modules import enrol.py, so a
check living there would close an import cycle.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from kit.devices.base import result_of
from kit.devices.entry import LOCAL, DeviceEntry
from kit.devices.inventory import connect
from kit.errors import EdgeKitError


@dataclass
class DeviceCheck:
    name: str
    ok: bool
    seconds: float
    error: str | None = None
    info: dict | None = None
    error_type: str | None = None  # the kit.errors class name (LinkLost, HostKeyRejected, ...) when not ok
    started: float | None = None   # wall clock (epoch s) when this device's check began and ended: a
    finished: float | None = None  # parallel check shows overlapping intervals

    def to_dict(self) -> dict:
        return asdict(self)


def check_device(entry: DeviceEntry, deadlines=None, timeout: float = 60.0, device=None) -> DeviceCheck:
    """Connect, push the agent if needed and run `info`. Failures the user can act on are
    returned (ok=False, error = the one-line message), never raised. `device`: an already made
    Device for `entry` (a fleet Session, which connects lazily under the group's limits)."""
    t0, started = time.monotonic(), time.time()
    try:
        if device is not None:
            info = result_of(entry.name, "info", device.run_agent(["info"], timeout=timeout))
        else:
            kwargs = {"deadlines": deadlines} if entry.name != LOCAL and deadlines else {}
            with connect(entry, **kwargs) as dev:
                info = result_of(entry.name, "info", dev.run_agent(["info"], timeout=timeout))
        return DeviceCheck(entry.name, True, time.monotonic() - t0, None, info, started=started, finished=time.time())
    except EdgeKitError as e:
        return DeviceCheck(entry.name, False, time.monotonic() - t0, str(e), error_type=type(e).__name__,
                           started=started, finished=time.time())
