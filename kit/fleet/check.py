"""`check_devices(entries)`: kit.devices.health.check_device on many devices at once, through a
kit.fleet.Group (bounded in all and per sshd, as a rollout is). Results in the entries' order."""

from __future__ import annotations

from typing import Callable, Optional

from kit.devices.health import DeviceCheck, check_device
from kit.fleet.group import Group


def check_devices(entries: list, *, timeout: float = 60.0, max_parallel: int = 16, max_connects_per_sshd: int = 8,
                  connect: Optional[Callable] = None,
                  on_done: Optional[Callable[[DeviceCheck], None]] = None) -> list[DeviceCheck]:
    """Every device's check (never raises for a device: a failure is its DeviceCheck with ok=False).
    `on_done(check)` is called from the worker thread as each device finishes."""
    group = Group(entries, connect=connect, max_parallel=max_parallel, max_connects_per_sshd=max_connects_per_sshd)
    by_entry = {e.name: e for e in group.entries}

    def one(dev) -> dict:
        check = check_device(by_entry[dev.name], timeout=timeout, device=dev)
        if on_done is not None:
            on_done(check)
        return {"check": check}

    result = group.run(one)
    return [result.results[n]["check"] for n in result.names]
