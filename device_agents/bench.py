"""`bench`: options, the sandboxed child process, and the timed loop that runs inside it.

Parent side (`run_in_child`): starts `python -m device_agents.bench` in its own session with
rlimits on open files, file size and core dumps, sends it the verified manifest on stdin, and
kills the whole process group at the wall-clock deadline. Child side (`child_main`): pins CPUs,
imports the runtime, then caps its own address space and CPU time relative to what the import
used (torch alone maps ~3.5 GB), re-hashes the model bytes it is about to parse, loads, checks
the reference output, warms up and times. Every figure in the result is one it measured.
A .pte may instead run in the native runner (device_agents.native) under the same sandbox.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields

from device_agents import memory, native, profile, refcheck, runtimes
from device_agents.bundle import file_path
from device_agents.errors import AgentError, as_agent_error
from device_agents.protocol import ProtocolError, parse_reply, reply
from device_agents.timing import stats as _stats
from device_agents.timing import thread_affinity as _thread_affinity
from device_agents.timing import timed_loop as _timed_loop

# Address space a thread may map beyond the model's budget: an 8 MiB stack plus a 64 MiB glibc
# malloc arena reservation.
THREAD_AS_MB = 72


@dataclass
class BenchOptions:
    runs: int = 50                 # timed runs (at least)
    warmup: int = 5
    threads: int = 1               # runtime threads (ORT intra-op, ExecuTorch threadpool)
    cpus: list | None = None       # pin the child to these CPUs before the runtime starts threads
    min_time_s: float = 0.0        # keep timing until this much time has passed
    max_runs: int = 100000
    input_shape: list | None = None
    deadline_s: float = 600.0      # wall clock for the whole child, import included
    max_memory_mb: int = 2048      # address space the model may add on top of the imported runtime
    max_cpu_s: float | None = None  # CPU seconds after import; default deadline_s x usable CPUs
    max_open_files: int = 256
    max_file_mb: int = 64
    power: bool = False
    idle_s: float = 1.0            # idle power measured for this long before the run (net figure)
    power_min_window_s: float = 1.0  # with power, the timed window lasts at least this long
    power_interval_s: float | None = None
    cooldown_c: float | None = None  # wait until the hottest zone is this cool before the run
    cooldown_max_s: float = 120.0
    pte_runtime: str = "auto"      # .pte: python (the bindings), native (the runner), auto (native when installed)
    native_runner: str | None = None  # digest of the runner folder the host pushed (<home>/native/<digest>)
    profile: bool = False          # after the timed runs, a separate profiled child (device_agents.profile)
    profile_runs: int = 10         # profiled runs (after one warm-up); the raw profile comes back compressed
    profile_max_kb: int = 4096     # cap on the compressed profile in the reply; over it, an error note instead

    @classmethod
    def parse(cls, raw: dict) -> "BenchOptions":
        """Validate options from the host: an unknown or mistyped option is an error, not ignored."""
        if not isinstance(raw, dict):
            raise AgentError("bad_option", "bench options must be a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise AgentError("bad_option", f"unknown bench option(s) {unknown}; known: {sorted(known)}")
        opts = cls()
        for key, value in raw.items():
            default = getattr(opts, key)
            kind = type(default) if default is not None else {"cpus": list, "input_shape": list, "native_runner": str}.get(key, float)
            ok = (value is None and default is None) or (
                kind is bool and isinstance(value, bool)) or (kind is str and isinstance(value, str)) or (
                kind is int and isinstance(value, int) and not isinstance(value, bool)) or (
                kind is float and isinstance(value, (int, float)) and not isinstance(value, bool)) or (
                kind is list and isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
            if not ok:
                raise AgentError("bad_option", f"bench option {key}={value!r} must be {kind.__name__}")
            setattr(opts, key, float(value) if kind is float and value is not None else value)
        if opts.runs < 2:
            raise AgentError("bad_option", "runs must be at least 2 (one run gives no spread to report)")
        for key in ("threads", "max_runs", "max_memory_mb", "max_open_files", "max_file_mb", "profile_runs", "profile_max_kb"):
            if getattr(opts, key) < 1:
                raise AgentError("bad_option", f"{key} must be at least 1")
        for key in ("warmup", "min_time_s", "idle_s"):
            if getattr(opts, key) < 0:
                raise AgentError("bad_option", f"{key} must not be negative")
        if opts.deadline_s <= 0:
            raise AgentError("bad_option", "deadline_s must be positive")
        if opts.input_shape is not None and (not opts.input_shape or min(opts.input_shape) < 1):
            raise AgentError("bad_option", f"input_shape {opts.input_shape} must list positive sizes")
        if opts.cpus is not None:
            usable = sorted(os.sched_getaffinity(0))
            if not opts.cpus or not set(opts.cpus) <= set(usable):
                raise AgentError("bad_option", f"cpus {opts.cpus} are not all usable here; usable CPUs: {usable}")
        native.check_options(opts.pte_runtime, opts.native_runner)
        if opts.power:
            opts.min_time_s = max(opts.min_time_s, opts.power_min_window_s)
        return opts


# --- parent side ---------------------------------------------------------------------------------

def _preexec(opts: BenchOptions):
    def apply():
        os.setsid()  # own process group: the deadline kills the child and anything it started
        from device_agents.liveness import die_with_parent  # issue 17: the child dies with the agent
        die_with_parent()
        resource.setrlimit(resource.RLIMIT_NOFILE, (opts.max_open_files, opts.max_open_files))
        fs = opts.max_file_mb * 1024 * 1024  # the child writes only its stderr log
        resource.setrlimit(resource.RLIMIT_FSIZE, (fs, fs))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files of a crashed model
    return apply


def _tail(f) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - 4096))
    lines = [ln for ln in f.read().decode("utf-8", "replace").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def run_in_child(bundle: str, manifest: dict, opts: BenchOptions) -> dict:
    """The timed child; with opts.profile, then a separate profiled child (device_agents.profile)."""
    result = _run_child(bundle, manifest, opts)
    if opts.profile:
        result["profile"] = profile.collect(lambda popts, path: _run_child(bundle, manifest, popts, path), opts, result)
    return result


def _run_child(bundle: str, manifest: dict, opts: BenchOptions, profile_to: str | None = None) -> dict:
    """Run the benchmark in a sandboxed child (the Python child, or for a .pte the native runner when
    installed and wanted: device_agents.native); every failure comes back as an AgentError.
    With `profile_to`, the child runs with the runtime's profiler on and writes the raw profile there."""
    runner = native.choose(manifest, opts)
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(opts.threads)  # read once when torch/numpy load, before any code of ours runs
    payload = json.dumps({"bundle": bundle, "manifest": manifest, "opts": asdict(opts), "profile_to": profile_to}).encode()
    cmd, preexec, out_dir = [sys.executable, "-m", "device_agents.bench"], _preexec(opts), None
    if runner is not None:
        out_dir = tempfile.mkdtemp(prefix="edgekit-native-")  # the runner writes its outputs here
        cmd, payload, sandbox = native.command(runner, bundle, manifest, opts, out_dir), b"", preexec
        if profile_to:
            cmd += ["--etdump", profile_to]

        def preexec():  # the same sandbox; CPUs pinned here, as the Python child pins its own
            sandbox()
            if opts.cpus:
                os.sched_setaffinity(0, opts.cpus)
    try:
        with tempfile.TemporaryFile() as err:
            start = time.monotonic()
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env,
                                    preexec_fn=preexec)
            try:
                out, _ = proc.communicate(payload, timeout=opts.deadline_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                raise AgentError("deadline", f"the model did not finish within deadline_s={opts.deadline_s:g} s "
                                             f"(import, load and runs); it was killed")
            elapsed = time.monotonic() - start
            tail, detail = _tail(err), native.error_detail(err) if runner is not None else ""
        doc = native.parse(out) if runner is not None else None
        if doc is not None and doc.get("ok") is True and refcheck.is_multi(manifest):
            native.check_outputs(doc["result"], bundle, manifest, out_dir)  # every output, before out_dir goes
    finally:
        if out_dir is not None:
            shutil.rmtree(out_dir, ignore_errors=True)
    if runner is None:  # (the runner's one JSON document is parsed above, while its output files exist)
        try:
            doc = parse_reply(out)
        except ProtocolError:
            doc = None  # no envelope: the exit status and stderr tell what happened
    if doc is not None and doc.get("ok") is True and proc.returncode == 0:
        doc["result"]["child_wall_s"] = elapsed
        return native.finish(doc["result"], runner) if runner is not None else doc["result"]
    if doc is not None and doc.get("ok") is False:
        msg = doc["error"]["message"] + (f": {detail}" if detail else "")  # ExecuTorch's own reason
        raise AgentError(doc["error"]["code"], msg)
    rc = proc.returncode
    if rc in (-signal.SIGXCPU, -signal.SIGKILL) and elapsed < opts.deadline_s:
        what = "CPU time (max_cpu_s)" if rc == -signal.SIGXCPU else "memory or CPU time"
        raise AgentError("resource_limit", f"the model exceeded its {what} limit and was killed (signal {-rc})")
    if "bad_alloc" in tail or "MemoryError" in tail or "Cannot allocate memory" in tail:
        raise AgentError("resource_limit", f"the model ran out of memory under max_memory_mb={opts.max_memory_mb}: {tail}")
    if rc is not None and rc < 0:
        raise AgentError("child_crashed", f"the model crashed the runtime (signal {signal.Signals(-rc).name}): {tail}")
    raise AgentError("child_failed", f"the model process exited with {rc} without a result: {tail}")


# --- child side ------------------------------------------------------------------------------------

def _vm_size_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def _apply_limits(opts: BenchOptions) -> dict:
    """Cap address space and CPU time from here on: the model gets a budget on top of the runtime."""
    base = _vm_size_mb()
    as_mb = base + opts.max_memory_mb + THREAD_AS_MB * (opts.threads + 2)
    b = int(as_mb * 1024 * 1024)
    resource.setrlimit(resource.RLIMIT_AS, (b, b))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    used = ru.ru_utime + ru.ru_stime
    cpu_budget = opts.max_cpu_s if opts.max_cpu_s is not None else opts.deadline_s * len(os.sched_getaffinity(0))
    soft = int(used + cpu_budget) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 5))
    return {"address_space_mb": round(as_mb, 1), "runtime_address_space_mb": round(base, 1),
            "max_memory_mb": opts.max_memory_mb, "cpu_s": cpu_budget, "open_files": opts.max_open_files,
            "file_size_mb": opts.max_file_mb, "deadline_s": opts.deadline_s}


def _call(fn, what: str):
    try:
        return fn()
    except AgentError:
        raise
    except Exception as e:
        if runtimes.is_memory_error(e):
            raise AgentError("resource_limit", f"the model ran out of memory {what} under the agent's limit "
                                               f"(max_memory_mb): {runtimes._first_line(e)}")
        raise AgentError("run_failed", f"the model failed {what}: {runtimes._first_line(e)}")


def _fits(shape, model_shape) -> bool:
    return model_shape is None or (len(shape) == len(model_shape) and
                                   all(m is None or m == s for s, m in zip(shape, model_shape)))


def run(bundle: str, manifest: dict, opts: BenchOptions, profile_to: str | None = None) -> dict:
    """Load, check against the reference output, warm up, time (with the profiler on: `profile_to`)."""
    rss_before_import = memory.rss_mb()
    import numpy as np  # numpy only in the child: the parent process never needs it

    runtime = manifest["runtime"]["name"]
    ref = manifest["reference"]
    runtimes.import_runtime(runtime)
    rss_after_import = _peak_rss_mb()
    mem = {"before_import_rss_mb": rss_before_import, "runtime_rss_mb": memory.rss_mb()}
    mem["runtime_import_mb"] = mem["runtime_rss_mb"] - rss_before_import
    limits = _apply_limits(opts)
    mem["before_load_rss_mb"] = memory.rss_mb()  # the model's load cost includes its bytes in memory
    try:
        with open(file_path(bundle, manifest["model"]["file"]), "rb") as f:
            data = f.read()
        if refcheck.is_multi(manifest):  # several inputs/outputs: one .npy each (device_agents.refcheck)
            ref_in = [np.load(file_path(bundle, f), allow_pickle=False) for f in ref["inputs"]]
            ref_out = [np.load(file_path(bundle, f), allow_pickle=False) for f in ref["outputs"]]
        else:
            ref_in = np.load(file_path(bundle, ref["input"]), allow_pickle=False)
            ref_out = np.load(file_path(bundle, ref["output"]), allow_pickle=False)
    except MemoryError:
        raise AgentError("resource_limit", "the bundle's files do not fit in max_memory_mb")
    if hashlib.sha256(data).hexdigest() != manifest["model"]["sha256"]:
        raise AgentError("hash_mismatch", "the model file changed after it was verified; re-push the bundle")

    t0 = time.perf_counter()
    model = runtimes.load(data, runtime, opts.threads, profile_to)
    load_ms = (time.perf_counter() - t0) * 1e3
    del data
    mem["after_load_rss_mb"] = memory.rss_mb()
    mem["model_load_mb"] = mem["after_load_rss_mb"] - mem["before_load_rss_mb"]
    mem["planned_mb"] = model.planned_mb
    hwm_reset = memory.reset_peak()

    x = ref_in
    if isinstance(ref_in, list):
        return _run_multi(model, ref_in, ref_out, manifest, opts, profile_to, mem, hwm_reset, limits,
                          rss_after_import, load_ms, runtime)
    if opts.input_shape is not None:
        shape = list(opts.input_shape)
        if not _fits(shape, model.input_shape):
            raise AgentError("bad_input_shape", f"input_shape {shape} does not fit the model's input "
                                                f"{model.input_shape} (manifest inputs[0].shape {manifest.get('inputs', [{}])[0].get('shape')})")
        x = np.random.default_rng(0).standard_normal(shape).astype(model.input_dtype)

    ref_call = model.prepare(ref_in)
    t0 = time.perf_counter()
    out = _call(ref_call, "on its reference input")
    first_ms = (time.perf_counter() - t0) * 1e3
    out = np.asarray(out)
    if out.shape != ref_out.shape:
        check = {"passed": False, "max_abs_err": None, "reason": f"output shape {list(out.shape)} != reference {list(ref_out.shape)}"}
    else:
        err = float(np.max(np.abs(out.astype(np.float64) - ref_out.astype(np.float64)))) if out.size else 0.0
        check = {"passed": bool(np.allclose(out, ref_out, atol=ref["atol"], rtol=ref["rtol"])), "max_abs_err": err,
                 "atol": ref["atol"], "rtol": ref["rtol"],
                 "top1_match": bool(out.size and np.argmax(out) == np.argmax(ref_out))}
    return _time(model, model.prepare(x), list(x.shape), opts, profile_to, mem, hwm_reset, limits, rss_after_import,
                 load_ms, first_ms, check, runtime)


def _run_multi(model, ref_in, ref_out, manifest, opts, profile_to, mem, hwm_reset, limits, rss_after_import, load_ms,
               runtime) -> dict:
    """Several inputs/outputs: the reference inputs fed in forward()'s order, every output checked."""
    if opts.input_shape is not None:
        raise AgentError("bad_input_shape", "input_shape applies to single-input models only; this bundle's model "
                                            f"takes {len(ref_in)} inputs (its reference inputs are timed)")
    call = _call(lambda: model.prepare_all(ref_in), "preparing its inputs")
    t0 = time.perf_counter()
    outs = _call(call, "on its reference input")
    first_ms = (time.perf_counter() - t0) * 1e3
    check = refcheck.check_outputs(list(outs), ref_out, manifest)
    result = _time(model, call, list(ref_in[0].shape), opts, profile_to, mem, hwm_reset, limits, rss_after_import,
                   load_ms, first_ms, check, runtime)
    result["input_shapes"] = [list(a.shape) for a in ref_in]
    return result


def _time(model, call, input_shape, opts, profile_to, mem, hwm_reset, limits, rss_after_import, load_ms, first_ms,
          check, runtime) -> dict:
    """Warm up, time, measure our own overhead; the bench result."""
    for _ in range(opts.warmup):
        _call(call, "during warm-up")
    window_start = time.monotonic()  # CLOCK_MONOTONIC, shared with the parent's sensor samplers
    ns = _call(lambda: _timed_loop(call, opts.runs, opts.min_time_s, opts.max_runs), "during the timed runs")
    window_end = time.monotonic()
    mem["inference_peak_rss_mb"] = memory.hwm_mb() if hwm_reset else None
    if profile_to:
        _call(lambda: model.finish_profile(profile_to), "writing its profile")
    samples_ms = [v / 1e6 for v in ns]
    latency = _stats(samples_ms)

    # Our own cost per timed run: the identical loop around a call that does nothing.
    noop = lambda: None  # noqa: E731
    n_overhead = min(max(len(ns), 1000), 20000)
    overhead_ms = sum(_timed_loop(noop, n_overhead, 0.0, n_overhead)) / n_overhead / 1e6
    tasks = os.listdir("/proc/self/task")
    return {
        "runtime": runtime,
        **({"pte_runtime": "python"} if runtime == "executorch" else {}),
        "threads": opts.threads,
        "runtime_threads": model.threads,
        "process_threads": len(tasks),
        "affinity": sorted(os.sched_getaffinity(0)),
        "thread_affinity": _thread_affinity(),
        "input_shape": input_shape,
        "load_ms": load_ms,
        "first_inference_ms": first_ms,
        "latency": latency,
        "samples_ms": [round(v, 5) for v in samples_ms[:5000]],  # latency{} covers all runs, this the first 5000
        "agent_overhead": {"per_run_ms": overhead_ms, "fraction_of_p50": overhead_ms / latency["p50_ms"],
                           "method": f"the timing loop around a no-op call, {n_overhead} runs"},
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_import_mb": rss_after_import,
        "memory": {**mem, "peak_rss_mb": _peak_rss_mb()},
        "limits": limits,
        "reference_check": check,
        "window": [window_start, window_end],
        "window_s": window_end - window_start,
    }


def child_main() -> int:
    try:
        req = json.loads(sys.stdin.buffer.read())
        opts = BenchOptions(**req["opts"])
        if opts.cpus:
            os.sched_setaffinity(0, opts.cpus)  # before the runtime exists: its threads inherit the mask
        return reply("bench", run(req["bundle"], req["manifest"], opts, req.get("profile_to")))
    except Exception as e:
        return reply("bench", error=as_agent_error(e, "out of memory under max_memory_mb"))


if __name__ == "__main__":
    sys.exit(child_main())
