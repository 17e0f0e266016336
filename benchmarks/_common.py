"""Helpers shared by the benchmark scripts (timing loops, CPU facts). Benchmarks print JSON."""

from __future__ import annotations

import json
import os
import platform
import time

import numpy as np


def time_fn(fn, runs: int = 50, warmup: int = 5) -> dict:
    """The same loop the device agent uses: warm-up, then perf_counter_ns around each call."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    a = np.asarray(samples)
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "mean_ms": float(a.mean()), "cv": float(a.std() / a.mean()), "runs": runs}


def cpu_facts() -> dict:
    flags, model, mhz = set(), None, None
    try:
        for line in open("/proc/cpuinfo"):
            k, _, v = line.partition(":")
            k = k.strip()
            if k == "flags" and not flags:
                flags = set(v.split())
            elif k == "model name" and model is None:
                model = v.strip()
            elif k == "cpu MHz" and mhz is None:
                mhz = float(v)
    except OSError:
        pass
    simd = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "neon" if platform.machine() == "aarch64" else "unknown"
    return {"arch": platform.machine(), "cpu_model": model, "mhz": mhz, "cores": os.cpu_count(), "simd": simd,
            "fma": "fma" in flags, "vnni": bool({"avx512_vnni", "avx_vnni"} & flags)}


def measured_peak_gflops(threads: int) -> float:
    """Achieved fp32 GFLOP/s of a large GEMM in torch: the practical compute roof for this CPU."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1536, 1536), torch.randn(1536, 1536)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(8):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * 1536 ** 3 / best / 1e9


def theoretical_peak_gflops(facts: dict, threads: int) -> float | None:
    """cores x clock x FLOPs/cycle, assuming two FMA units per core (fp32 lanes x 2 ops x 2 units)."""
    lanes = {"avx512": 16, "avx2": 8, "neon": 4}.get(facts["simd"])
    if not lanes or not facts.get("mhz"):
        return None
    return threads * facts["mhz"] / 1000 * lanes * 2 * 2


def emit(doc: dict) -> None:
    print(json.dumps(doc, indent=2))
