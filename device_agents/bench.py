"""The timed part of `bench`, run inside the sandboxed child process."""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

from device_agents import runtimes
from device_agents.bundle import file_path
from device_agents.errors import AgentError


def _stats(samples_ms: list[float]) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    mean = float(a.mean())
    return {
        "runs": int(a.size),
        "min_ms": float(a.min()),
        "mean_ms": mean,
        "std_ms": float(a.std(ddof=1)) if a.size > 1 else 0.0,
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
        "cv": float(a.std(ddof=1) / mean) if a.size > 1 and mean > 0 else 0.0,
    }


def _peak_rss_mb() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def run(bundle_dir: str, manifest: dict, opts: dict) -> dict:
    """Load, check against the reference output, warm up, time; every figure here is measured."""
    runtime = manifest["runtime"]["name"]
    ref = manifest["reference"]
    ref_in = np.load(file_path(bundle_dir, ref["input"]), allow_pickle=False)
    ref_out = np.load(file_path(bundle_dir, ref["output"]), allow_pickle=False)
    x = ref_in
    if opts.get("input_shape"):
        shape = tuple(opts["input_shape"])
        if shape != tuple(ref_in.shape):
            raise AgentError("bad_input_shape",
                             f"input shape {list(shape)} does not match the model's {list(ref_in.shape)} (manifest inputs[0].shape)")
    rss_before = _peak_rss_mb()
    t0 = time.perf_counter()
    model = runtimes.load(file_path(bundle_dir, manifest["model"]["file"]), runtime, opts.get("threads", 1))
    load_ms = (time.perf_counter() - t0) * 1e3

    t0 = time.perf_counter()
    try:
        out = model(x)
    except AgentError:
        raise
    except Exception as e:
        raise AgentError("run_failed", f"the model failed on its reference input: {str(e).splitlines()[0][:200]}")
    first_ms = (time.perf_counter() - t0) * 1e3
    out = np.asarray(out)
    if out.shape != ref_out.shape:
        check = {"passed": False, "max_abs_err": None, "reason": f"output shape {list(out.shape)} != reference {list(ref_out.shape)}"}
    else:
        err = float(np.max(np.abs(out.astype(np.float64) - ref_out.astype(np.float64)))) if out.size else 0.0
        ok = bool(np.allclose(out, ref_out, atol=ref["atol"], rtol=ref["rtol"]))
        check = {"passed": ok, "max_abs_err": err, "atol": ref["atol"], "rtol": ref["rtol"],
                 "top1_match": bool(out.size and np.argmax(out) == np.argmax(ref_out))}

    for _ in range(opts.get("warmup", 5)):
        model(x)
    min_runs, min_time = opts.get("runs", 50), opts.get("min_time_s", 0.0)
    samples = []
    start = time.perf_counter()
    while len(samples) < min_runs or (time.perf_counter() - start) < min_time:
        t0 = time.perf_counter_ns()
        model(x)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
        if len(samples) >= opts.get("max_runs", 100000):
            break
    window = (start, time.perf_counter())
    # The cost of the timing loop itself, so the reported figure can say how much is ours.
    t0 = time.perf_counter_ns()
    for _ in range(1000):
        time.perf_counter_ns()
    overhead_ms = (time.perf_counter_ns() - t0) / 1e9
    return {
        "runtime": runtime,
        "threads": opts.get("threads", 1),
        "load_ms": load_ms,
        "first_inference_ms": first_ms,
        "latency": _stats(samples),
        "samples_ms": [round(v, 5) for v in samples[:5000]],
        "timer_overhead_ms_per_run": overhead_ms,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_before_load_mb": rss_before,
        "reference_check": check,
        "window_s": window[1] - window[0],
        "window": [window[0], window[1]],
    }
