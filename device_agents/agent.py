"""Device agent entry point: `python3 -m device_agents <verb> [options]`, one JSON document out.

Verbs: info | verify | bench | activate | rollback | status (fleet verbs: install.py). The agent accepts bundles (folders on the device) and option
values, never shell strings. A model file is hostile input until its hash is verified, and even
then it is parsed and run only in a child process under resource limits and a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

from device_agents import AGENT_VERSION, SCHEMA_VERSION, install, runtimes, sensors
from device_agents.bundle import load_manifest, verify_files
from device_agents.errors import AgentError


def _emit(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def _envelope(verb: str, result: dict | None = None, error: AgentError | None = None) -> dict:
    doc = {"schema_version": SCHEMA_VERSION, "agent_version": AGENT_VERSION, "verb": verb, "ok": error is None}
    if error is None:
        doc["result"] = result
    else:
        doc["error"] = {"code": error.code, "message": error.message}
    return doc


def info() -> dict:
    def read(path):
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return None

    cpu_model = None
    parts = set()
    for line in (read("/proc/cpuinfo") or "").splitlines():
        key, _, val = line.partition(":")
        key, val = key.strip(), val.strip()
        if key in ("model name", "Model", "Hardware") and not cpu_model:
            cpu_model = val
        if key == "CPU part":
            parts.add(val)  # distinct ARM core types: more than one means big.LITTLE
    mem_kb = None
    for line in (read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    cpufreq = "/sys/devices/system/cpu/cpu0/cpufreq"
    cur = read(f"{cpufreq}/scaling_cur_freq")
    mx = read(f"{cpufreq}/cpuinfo_max_freq")
    return {
        "arch": platform.machine(),
        "cpu_model": cpu_model,
        "cores": os.cpu_count(),
        "core_types": sorted(parts),
        "cpu_freq_mhz": {"current": int(cur) / 1000 if cur else None, "max": int(mx) / 1000 if mx else None,
                         "governor": read(f"{cpufreq}/scaling_governor")},
        "ram_mb": mem_kb // 1024 if mem_kb else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "runtimes": runtimes.available(),
        "sensors": sensors.probe(),
        "hostname": platform.node(),
    }


def _limits(opts: dict):
    def apply():
        os.setsid()  # own process group, so a deadline kills the whole child tree
        if opts.get("max_memory_mb"):
            b = int(opts["max_memory_mb"]) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (b, b))
        if opts.get("max_cpu_s"):
            s = int(opts["max_cpu_s"])
            resource.setrlimit(resource.RLIMIT_CPU, (s, s + 5))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        fs = 64 * 1024 * 1024  # the child writes nothing of its own; allow small temp files only
        resource.setrlimit(resource.RLIMIT_FSIZE, (fs, fs))
    return apply


def _run_child(bundle: str, manifest: dict, opts: dict) -> dict:
    """Parse and run the model in a child process under rlimits and a wall-clock deadline."""
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "device_agents", "_worker", "--bundle", bundle, "--opts", json.dumps(opts)]
    deadline = float(opts.get("deadline_s", 600))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, preexec_fn=_limits(opts))
    try:
        out, err = proc.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        raise AgentError("deadline", f"the model did not finish within {deadline:g} s (deadline_s); it was killed")
    if proc.returncode != 0 or not out.strip():
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        if proc.returncode in (-9, -24) or "MemoryError" in tail[0] or "bad_alloc" in tail[0]:
            raise AgentError("resource_limit", f"the model exceeded its resource limits (exit {proc.returncode}): {tail[0][:200]}")
        raise AgentError("child_failed", f"the model process died (exit {proc.returncode}): {tail[0][:200]}")
    doc = json.loads(out.decode().strip().splitlines()[-1])
    if not doc.get("ok"):
        raise AgentError(doc["error"]["code"], doc["error"]["message"])
    return doc["result"]


def bench(bundle: str, opts: dict) -> dict:
    manifest = load_manifest(bundle)
    verify_files(bundle, manifest)  # before anything parses the model
    idle = sensors.idle_power(opts.get("idle_s", 0.0)) if opts.get("power") else None
    thermal_before = sensors.thermal()
    if opts.get("cooldown_c") is not None:
        sensors.wait_cool(opts["cooldown_c"], opts.get("cooldown_max_s", 120))
    sampler = sensors.PowerSampler() if opts.get("power") else None
    if sampler:
        sampler.start()
    result = _run_child(bundle, manifest, opts)
    power = sampler.stop(result["window"], result["latency"]["runs"], idle) if sampler else \
        {"available": False, "reason": "power measurement not requested (--power)"}
    result.update({
        "bundle_id": manifest.get("bundle_id"),
        "model_name": manifest.get("name"),
        "model_sha256": manifest["model"]["sha256"],
        "verified": {"hashes": True, "signature": manifest.get("_signature_checked", False)},
        "power": power,
        "thermal": sensors.thermal_summary(thermal_before, sensors.thermal()),
        "device": {"arch": platform.machine(), "hostname": platform.node()},
    })
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="device_agents", description=__doc__)
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("info")
    v = sub.add_parser("verify")
    v.add_argument("--bundle", required=True)
    install.add_parsers(sub)  # fleet verbs: activate | rollback | status
    for name in ("bench", "_worker"):
        b = sub.add_parser(name)
        b.add_argument("--bundle", required=True)
        b.add_argument("--opts", default="{}", help="JSON options (runs, warmup, threads, ...)")
        b.add_argument("--runs", type=int)
        b.add_argument("--warmup", type=int)
        b.add_argument("--threads", type=int)
        b.add_argument("--min-time-s", type=float)
        b.add_argument("--deadline-s", type=float)
        b.add_argument("--max-memory-mb", type=int)
        b.add_argument("--input-shape", type=lambda s: [int(v) for v in s.split(",")])
        b.add_argument("--power", action="store_true")
    return p


def main(argv=None) -> int:
    parser = _parser()
    # argparse exits with usage text on bad input; the host needs JSON, so catch it.
    parser.error = lambda msg: (_ for _ in ()).throw(AgentError("bad_arguments", msg))  # type: ignore[method-assign]
    for sp in parser._subparsers._group_actions[0].choices.values():  # type: ignore[union-attr]
        sp.error = parser.error
    verb = "?"
    try:
        args = parser.parse_args(argv)
        verb = args.verb
        if verb == "info":
            _emit(_envelope(verb, info()))
            return 0
        if verb == "verify":
            m = load_manifest(args.bundle)
            verify_files(args.bundle, m)
            _emit(_envelope(verb, {"bundle_id": m.get("bundle_id"), "verified": True}))
            return 0
        if verb in install.VERBS:
            _emit(_envelope(verb, install.run_verb(args)))
            return 0
        opts = json.loads(args.opts)
        for key in ("runs", "warmup", "threads", "min_time_s", "deadline_s", "max_memory_mb", "input_shape"):
            if getattr(args, key) is not None:
                opts[key] = getattr(args, key)
        if args.power:
            opts["power"] = True
        if verb == "_worker":
            from device_agents import bench as bench_mod

            manifest = load_manifest(args.bundle)
            _emit(_envelope(verb, bench_mod.run(args.bundle, manifest, opts)))
            return 0
        _emit(_envelope(verb, bench(args.bundle, opts)))
        return 0
    except AgentError as e:
        _emit(_envelope(verb, error=e))
        return 1
    except MemoryError:
        _emit(_envelope(verb, error=AgentError("resource_limit", "out of memory under the agent's limit")))
        return 1
    except Exception as e:  # the host must always get JSON back
        _emit(_envelope(verb, error=AgentError("internal", f"{type(e).__name__}: {e}")))
        return 1
