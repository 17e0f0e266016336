"""The bench child's clocks: the timed loop (the same code times the no-op that measures our own
overhead), latency statistics, and which CPUs each thread of the process may run on."""

from __future__ import annotations

import os
import time


def thread_affinity() -> dict:
    """Cpus_allowed_list of every thread in this process -> how many threads have it."""
    masks: dict[str, int] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("Cpus_allowed_list:"):
                        key = line.split(":", 1)[1].strip()
                        masks[key] = masks.get(key, 0) + 1
        except OSError:
            pass  # a thread that ended meanwhile
    return masks


def timed_loop(fn, min_runs: int, min_time_s: float, max_runs: int) -> list[int]:
    """Per-run nanoseconds. The same code times the no-op that measures our own overhead."""
    clock = time.perf_counter_ns
    samples: list[int] = []
    append = samples.append
    until = clock() + int(min_time_s * 1e9)
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        append(t1 - t0)
        n = len(samples)
        if n >= max_runs or (n >= min_runs and t1 >= until):
            return samples


def stats(samples_ms) -> dict:
    import numpy as np

    a = np.asarray(samples_ms, dtype=np.float64)
    mean = float(a.mean())
    std = float(a.std(ddof=1))
    return {"runs": int(a.size), "min_ms": float(a.min()), "mean_ms": mean, "std_ms": std,
            "p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()), "cv": std / mean if mean > 0 else None}
