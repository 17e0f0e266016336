"""What `info` reports about the device: CPU (core types per cluster), clocks, memory, OS."""

from __future__ import annotations

import os
import platform

from device_agents.sensors import power, thermal
from device_agents.sensors.config import SensorConfig, read_text

# ARM "CPU part" ids (implementer 0x41, Arm Ltd) -> core names, for big.LITTLE reporting.
ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
    "0xd42": "Cortex-A78AE", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
    "0xd48": "Cortex-X2", "0xd49": "Neoverse-N2", "0xd4b": "Cortex-A78C", "0xd4d": "Cortex-A715",
    "0xd4e": "Cortex-X3", "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4",
}


def parse_cpuinfo(text: str) -> dict:
    """/proc/cpuinfo -> model name and, on ARM, the core type of every CPU."""
    model, cores, cur = None, {}, None
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key == "processor" and val.isdigit():
            cur = int(val)
        elif key in ("model name", "Model", "Hardware") and not model:
            model = val
        elif key == "CPU part" and cur is not None:
            cores[cur] = ARM_PARTS.get(val.lower(), val)
    return {"model": model, "core_types": cores}


def _memory_mb(cfg: SensorConfig) -> int | None:
    for line in (read_text(cfg.proc("meminfo")) or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return None


def info(cfg: SensorConfig, runtimes_available: dict) -> dict:
    cpu = parse_cpuinfo(read_text(cfg.proc("cpuinfo")) or "")
    clusters = []
    for name, pol in thermal.cpufreq_policies(cfg).items():
        types = sorted({cpu["core_types"].get(c) for c in pol["cpus"]} - {None})
        clusters.append({"policy": name, "cpus": pol["cpus"], "core_types": types, "governor": pol["governor"],
                         "cur_mhz": pol["cur_khz"] / 1000 if pol["cur_khz"] else None,
                         "max_mhz": pol["max_khz"] / 1000 if pol["max_khz"] else None})
    backend, reasons = power.discover(cfg)
    zones = thermal.zones(cfg)
    return {
        "arch": platform.machine(),
        "cpu_model": cpu["model"],
        "cores": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "core_types": sorted(set(cpu["core_types"].values())),  # more than one: big.LITTLE
        "core_type_per_cpu": {str(k): v for k, v in sorted(cpu["core_types"].items())},
        "clusters": clusters,
        "cpufreq_available": bool(clusters),
        "ram_mb": _memory_mb(cfg),
        "os": platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "runtimes": runtimes_available,
        "sensors": {
            "power": backend.describe() if backend else None,
            "power_unavailable": reasons,
            "thermal_zones": sorted(zones),
            "pi_throttled": thermal.pi_throttled(cfg) is not None,
        },
        "hostname": platform.node(),
    }
