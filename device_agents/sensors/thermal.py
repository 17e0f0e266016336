"""SoC temperature and throttling evidence: thermal zones, `vcgencmd get_throttled` on a Pi,
x86 thermal_throttle counters, cpufreq caps and clock drops during the run."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import time

from device_agents.sensors.config import SensorConfig, read_int, read_text

# vcgencmd get_throttled bits (Raspberry Pi documentation, "get_throttled").
THROTTLE_BITS = {
    0: "under_voltage", 1: "arm_freq_capped", 2: "throttled", 3: "soft_temp_limit",
    16: "under_voltage_occurred", 17: "arm_freq_capped_occurred", 18: "throttled_occurred",
    19: "soft_temp_limit_occurred",
}


def zones(cfg: SensorConfig) -> dict[str, float]:
    """{zone type: °C} for every readable thermal zone (millidegrees in sysfs)."""
    temps = {}
    for z in sorted(glob.glob(cfg.sys("class", "thermal", "thermal_zone*")),
                    key=lambda p: int(re.sub(r"\D", "", os.path.basename(p)) or 0)):
        t = read_int(os.path.join(z, "temp"))
        if t is not None:
            name = read_text(os.path.join(z, "type")) or os.path.basename(z)
            temps[name if name not in temps else f"{name}.{os.path.basename(z)}"] = t / 1000.0
    return temps


def parse_throttled(text: str) -> int | None:
    m = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", text or "")
    return int(m.group(1), 0) if m else None


def decode_throttled(value: int) -> list[str]:
    return [name for bit, name in THROTTLE_BITS.items() if value & (1 << bit)]


def pi_throttled(cfg: SensorConfig) -> int | None:
    try:
        return parse_throttled(cfg.run_vcgencmd("get_throttled"))
    except (OSError, subprocess.SubprocessError):
        return None


def cpufreq_policies(cfg: SensorConfig) -> dict[str, dict]:
    """cpufreq policy -> cpus, governor, cur/min/max kHz (one policy per cluster on big.LITTLE)."""
    out = {}
    for p in sorted(glob.glob(cfg.sys("devices", "system", "cpu", "cpufreq", "policy*"))):
        cpus = read_text(os.path.join(p, "related_cpus")) or read_text(os.path.join(p, "affected_cpus")) or ""
        out[os.path.basename(p)] = {
            "cpus": [int(c) for c in cpus.split()],
            "governor": read_text(os.path.join(p, "scaling_governor")),
            "cur_khz": read_int(os.path.join(p, "scaling_cur_freq")),
            "max_khz": read_int(os.path.join(p, "cpuinfo_max_freq")),
            "scaling_max_khz": read_int(os.path.join(p, "scaling_max_freq")),
            "min_khz": read_int(os.path.join(p, "cpuinfo_min_freq")),
        }
    return out


def throttle_counts(cfg: SensorConfig) -> int | None:
    """Sum of x86 core/package thermal throttle event counters (None where the kernel has none)."""
    total, seen = 0, False
    for f in glob.glob(cfg.sys("devices", "system", "cpu", "cpu[0-9]*", "thermal_throttle", "*_throttle_count")):
        v = read_int(f)
        if v is not None:
            total, seen = total + v, True
    return total if seen else None


def snapshot(cfg: SensorConfig) -> dict:
    """Everything read before and after a run."""
    return {"t": time.monotonic(), "zones": zones(cfg), "pi_throttled": pi_throttled(cfg),
            "throttle_count": throttle_counts(cfg), "policies": cpufreq_policies(cfg)}


def freq_sample(cfg: SensorConfig) -> dict[str, tuple[int | None, int | None]]:
    """Per policy (cur kHz, scaling_max kHz): what the sampler records during the run."""
    out = {}
    for p in glob.glob(cfg.sys("devices", "system", "cpu", "cpufreq", "policy*")):
        out[os.path.basename(p)] = (read_int(os.path.join(p, "scaling_cur_freq")),
                                    read_int(os.path.join(p, "scaling_max_freq")))
    return out


def summary(before: dict, after: dict, freq_samples: list, busy_cpus: list[int] | None) -> dict:
    """The `thermal` block of a bench result; `throttled` is None only when nothing could tell."""
    if not before["zones"] and not after["zones"] and before["pi_throttled"] is None and not before["policies"] \
            and before["throttle_count"] is None:
        return {"available": False,
                "reason": "no thermal zones, cpufreq, throttle counters or vcgencmd readable on this device"}
    evidence, signals = [], 0
    if before["pi_throttled"] is not None and after["pi_throttled"] is not None:
        signals += 1
        now_bits = after["pi_throttled"] & 0xF
        new_bits = (after["pi_throttled"] & ~before["pi_throttled"]) & 0xF0000
        if now_bits or new_bits:
            evidence.append("vcgencmd get_throttled: " + ", ".join(decode_throttled(now_bits | new_bits)))
    if before["throttle_count"] is not None and after["throttle_count"] is not None:
        signals += 1
        if after["throttle_count"] > before["throttle_count"]:
            evidence.append(f"thermal_throttle counters rose by {after['throttle_count'] - before['throttle_count']}")
    freq = {}
    busy = set(busy_cpus or [])
    for name, pol in before["policies"].items():
        if busy and pol["cpus"] and not busy & set(pol["cpus"]):
            continue  # a cluster the model did not run on
        curs = [s[1][name][0] for s in freq_samples if name in s[1] and s[1][name][0]]
        caps = [s[1][name][1] for s in freq_samples if name in s[1] and s[1][name][1]]
        if not curs or not pol["max_khz"]:
            continue
        signals += 1
        freq[name] = {"min_khz": min(curs), "max_khz": max(curs), "cpuinfo_max_khz": pol["max_khz"],
                      "governor": pol["governor"], "samples": len(curs)}
        if caps and min(caps) < pol["max_khz"] and (pol["scaling_max_khz"] or 0) >= pol["max_khz"]:
            evidence.append(f"{name}: max frequency capped to {min(caps)} kHz during the run (thermal/power limit)")
        # A clock that fell well below its own peak while the model kept the core busy.
        if min(curs) < 0.9 * max(curs) and pol["governor"] in ("performance", "schedutil", "ondemand", "conservative"):
            evidence.append(f"{name}: clock dropped from {max(curs)} to {min(curs)} kHz during the run")
    tmax = lambda z: max(z.values()) if z else None  # noqa: E731
    return {
        "available": True,
        "before_c": before["zones"], "after_c": after["zones"],
        "max_before_c": tmax(before["zones"]), "max_after_c": tmax(after["zones"]),
        "pi_throttled_before": None if before["pi_throttled"] is None else hex(before["pi_throttled"]),
        "pi_throttled_after": None if after["pi_throttled"] is None else hex(after["pi_throttled"]),
        "cpufreq": freq,
        "throttled": (bool(evidence) if signals else None),
        "evidence": evidence if signals else ["no throttle signal readable (no vcgencmd, counters or cpufreq)"],
    }


def wait_cool(cfg: SensorConfig, target_c: float, max_s: float, poll_s: float = 1.0) -> dict:
    """Wait until the hottest zone is at or below target_c, at most max_s seconds."""
    start = time.monotonic()
    first = zones(cfg)
    if not first:
        return {"requested_c": target_c, "reached": None, "waited_s": 0.0,
                "reason": "no readable thermal zone: cannot wait for a temperature"}
    t = first
    while max(t.values()) > target_c and time.monotonic() - start < max_s:
        time.sleep(poll_s)
        t = zones(cfg) or t
    return {"requested_c": target_c, "reached": max(t.values()) <= target_c, "waited_s": time.monotonic() - start,
            "start_c": max(first.values()), "end_c": max(t.values())}
