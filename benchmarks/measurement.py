"""Is the agent's latency figure the runtime's figure, and what does the SSH hop cost? Prints JSON.

Side by side in one run, on one MobileNetV2 (width 1.0, 1x3x128x128, random weights; ~5-10 ms):
- agent p50 over SSH (real OpenSSH sshd on 127.0.0.1, sandboxed child, Python timing loop) versus
  the runtime's OWN timing of the same artifact: ExecuTorch's ETDump "Method::execute" events and
  ONNX Runtime's profiler "model_run" events. ratio = agent / runtime (target: within 5%).
  Rounds alternate agent and runtime so drift on a shared machine hits both alike.
- SSH overhead per bench call: wall time of one `bench()` through SshDevice minus the same call on
  the built-in local device (same agent, same options, no SSH); the same for the light `info`
  call; plus the bare exec round trip and push figures (first push, content-addressed re-push).

    python benchmarks/measurement.py [--runs 100] [--rounds 3] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def runtime_own_p50_ms(bundle, runs: int, threads: int = 1) -> float:
    """p50 of the runtime's own per-inference timing (not a Python timer around the call)."""
    x = np.load(bundle.path / "reference_input.npy")
    data = bundle.model_file.read_bytes()
    if bundle.runtime == "executorch":
        import torch
        from executorch.devtools import Inspector
        from executorch.extension.pybindings import portable_lib as pl

        torch.set_num_threads(threads)
        pl._unsafe_reset_threadpool(threads)  # XNNPACK's pool, sized as the agent sizes it
        module = pl._load_for_executorch_from_buffer(data, enable_etdump=True, debug_buffer_size=0)
        xt = torch.from_numpy(x)
        for _ in range(5):
            module.forward((xt,))
        with tempfile.TemporaryDirectory() as d:
            # ETDump accumulates every event since load: the warm-up is dropped by taking the last `runs`.
            for _ in range(runs):
                module.forward((xt,))
            module.write_etdump_result_to_file(f"{d}/run.etdp", f"{d}/debug.bin")
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                inspector = Inspector(etdump_path=f"{d}/run.etdp")
        raw = [ev.perf_data.raw for eb in inspector.event_blocks for ev in eb.events
               if ev.name == "Method::execute" and ev.perf_data is not None][0]
        return float(np.median(raw[-runs:]))  # ms
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    with tempfile.TemporaryDirectory() as d:
        opts.enable_profiling = True
        opts.profile_file_prefix = f"{d}/ort"
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        for _ in range(5 + runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    durs = [e["dur"] for e in events if e.get("name") == "model_run" and e.get("cat") == "Session"]
    return float(np.median(durs[-runs:])) / 1000.0  # us -> ms


def build_bundles(out: Path, size: int):
    import torch

    from kit.models import mobilenet_student
    from kit.package import package

    torch.manual_seed(0)
    model = mobilenet_student(width_mult=1.0, num_classes=10).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    return (package(model, "executorch", out / "mnv2-pte", x, name="mnv2"),
            package(model, "onnx", out / "mnv2-onnx", x, name="mnv2"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()

    from kit.devices.bench import BenchOptions, bench
    from kit.devices.local import LocalDevice
    from kit.devices import SshDevice
    from kit.testbed.sshd import SshdFactory

    work = Path(tempfile.mkdtemp(prefix="edgekit-measurement-"))
    os.environ.setdefault("EDGEKIT_CONFIG_DIR", str(work / "config"))  # signing keys for this run only
    if not (Path(os.environ["EDGEKIT_CONFIG_DIR"]) / "keys").exists():
        from kit.package.signing import ensure_keys

        ensure_keys()
    t0 = time.time()
    bundles = build_bundles(work / "bundles", args.size)
    build_s = time.time() - t0
    opts = BenchOptions(runs=args.runs, warmup=10, threads=1)
    result: dict = {"model": f"mobilenet_v2 w1.0 1x3x{args.size}x{args.size} fp32", "runs": args.runs,
                    "rounds": args.rounds, "threads": 1, "build_s": round(build_s, 1), "artifacts": {}}
    with SshdFactory(work / "sshd") as factory:
        entry, = factory(1)
        with SshDevice(entry) as dev, LocalDevice() as local:
            # Push figures: first push of the agent and each bundle, then the content-addressed skip.
            t = time.perf_counter()
            dev.ensure_agent()
            push = {"agent_first_s": time.perf_counter() - t}
            for b in bundles:
                size = sum(p.stat().st_size for p in b.path.iterdir())
                t = time.perf_counter()
                dev.stage_bundle(b.path)
                first = time.perf_counter() - t
                t = time.perf_counter()
                dev.stage_bundle(b.path)
                again = time.perf_counter() - t
                push[b.runtime] = {"bytes": size, "first_push_s": round(first, 4), "MB_per_s": round(size / first / 1e6, 1),
                                   "unchanged_repush_s": round(again, 4)}
            rtt = []
            for _ in range(20):
                t = time.perf_counter()
                dev.exec("true", 10)
                rtt.append((time.perf_counter() - t) * 1e3)
            result["ssh_exec_round_trip_ms_p50"] = round(statistics.median(rtt), 2)
            info_ssh, info_local = [], []
            for _ in range(10):  # the lightest agent call: what the SSH hop adds to one invocation
                t = time.perf_counter()
                dev.run_agent(["info"], 60)
                info_ssh.append((time.perf_counter() - t) * 1e3)
                t = time.perf_counter()
                local.run_agent(["info"], 60)
                info_local.append((time.perf_counter() - t) * 1e3)
            result["agent_info_call_ms_p50"] = {"ssh": round(statistics.median(info_ssh), 1),
                                                "local": round(statistics.median(info_local), 1),
                                                "ssh_overhead": round(statistics.median(info_ssh) - statistics.median(info_local), 1)}
            result["push"] = push

            for b in bundles:
                agent, own, wall_ssh, wall_local, local_p50 = [], [], [], [], []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    m = bench(dev, b, opts)
                    wall_ssh.append(time.perf_counter() - t)
                    agent.append(m.p50_ms)
                    own.append(runtime_own_p50_ms(b, args.runs))
                    t = time.perf_counter()
                    ml = bench(local, b, opts)
                    wall_local.append(time.perf_counter() - t)
                    local_p50.append(ml.p50_ms)
                a, o = statistics.median(agent), statistics.median(own)
                result["artifacts"][b.runtime] = {
                    "agent_p50_ms_over_ssh": round(a, 4),
                    "runtime_own_p50_ms": round(o, 4),
                    "runtime_timer": "ETDump Method::execute" if b.runtime == "executorch" else "ORT profiler model_run",
                    "ratio_agent_over_runtime": round(a / o, 4),
                    "within_5pct": abs(a / o - 1) <= 0.05,
                    "per_round_ratios": [round(x / y, 4) for x, y in zip(agent, own)],
                    "median_round_ratio": round(statistics.median(x / y for x, y in zip(agent, own)), 4),
                    "agent_p50_ms_local_device": round(statistics.median(local_p50), 4),
                    "bench_call_wall_s_ssh": round(statistics.median(wall_ssh), 3),
                    "bench_call_wall_s_local": round(statistics.median(wall_local), 3),
                    "ssh_overhead_ms_per_bench_call": round((statistics.median(wall_ssh) - statistics.median(wall_local)) * 1e3, 1),
                }
    result["load_average_1m"] = os.getloadavg()[0]  # other work on the machine makes every ratio noisier
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
