"""Power and thermal sensors. Backends are filled in per device family; where none is readable
the result says so and why, never a number that was not measured."""

from __future__ import annotations

import glob
import os
import time


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def probe() -> dict:
    zones = sorted(glob.glob("/sys/class/thermal/thermal_zone*/temp"))
    return {
        "power": [],
        "thermal": [os.path.dirname(z) for z in zones if _read(z) is not None],
    }


def thermal() -> dict:
    temps = {}
    for z in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        t = _read(f"{z}/temp")
        if t and t.lstrip("-").isdigit():
            temps[_read(f"{z}/type") or os.path.basename(z)] = int(t) / 1000.0
    return temps


def thermal_summary(before: dict, after: dict) -> dict:
    if not before and not after:
        return {"available": False, "reason": "no readable thermal zones (/sys/class/thermal)"}
    return {"available": True, "before_c": before, "after_c": after, "throttled": None}


def wait_cool(target_c: float, max_s: float) -> None:
    end = time.monotonic() + max_s
    while time.monotonic() < end:
        t = thermal()
        if not t or max(t.values()) <= target_c:
            return
        time.sleep(1.0)


def idle_power(seconds: float):
    return None


class PowerSampler:
    def start(self):
        pass

    def stop(self, window, runs, idle):
        return {"available": False, "reason": "no power sensor backend readable on this device"}
