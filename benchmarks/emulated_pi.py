"""Emulated Raspberry Pi (issue 10): what the aarch64 device costs, and how it compares to the host.

    python benchmarks/emulated_pi.py [--runs 30] [--size 32] [--slow 0.25]

Measured in ONE run, side by side:
  - rootfs: cold build time (recorded when the cache entry was built) and the cached lookup time;
  - start: start_pi wall time with a cached rootfs (keys, overlay, aarch64 sshd up);
  - SSH: connect + auth + one agent `info` round trip on the emulated Pi (aarch64 sshd and python
    under qemu) vs a native host sshd (the alternative design: host sshd, aarch64 python sessions);
  - bench: the same signed .onnx bundle (MobileNetV2-0.5 student, SIZE x SIZE) on `local` (x86-64)
    and on the emulated Pi (aarch64 ONNX Runtime under qemu), with ratios;
  - with --slow Q: the same bench on a second Pi limited to Q of one core (cgroup cpu quota).
Needs root, qemu-user-static, debootstrap and openssh-server. Prints JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
from _common import cpu_facts, emit  # noqa: E402

from kit.devices import BenchOptions, LocalDevice, bench  # noqa: E402
from kit.devices import SshDevice  # noqa: E402
from kit.models import mobilenet_student  # noqa: E402
from kit.package import package  # noqa: E402
from kit.package.signing import init_keys  # noqa: E402
from kit.testbed.pi import build_rootfs, start_pi, stop_pi  # noqa: E402
from kit.testbed.sshd import SshdFactory, SshdMissing  # noqa: E402


def _figures(m) -> dict:
    return {"p50_ms": round(m.p50_ms, 3), "p90_ms": round(m.p90_ms, 3), "mean_ms": round(m.mean_ms, 3),
            "cv": round(m.cv, 3), "load_ms": round(m.load_ms, 1), "first_inference_ms": round(m.first_inference_ms, 1),
            "peak_rss_mb": round(m.peak_rss_mb, 1), "reference_passed": m.reference_passed,
            "arch": m.raw.get("device", {}).get("arch")}


def _connect_and_info(entry, trusted) -> dict:
    t0 = time.perf_counter()
    dev = SshDevice(entry, trusted_keys=trusted)
    t1 = time.perf_counter()
    dev.run_agent(["info"], timeout=600)  # first call also pushes the agent
    t2 = time.perf_counter()
    doc = dev.run_agent(["info"], timeout=600)
    t3 = time.perf_counter()
    dev.close()
    return {"connect_auth_s": round(t1 - t0, 3), "first_info_s_incl_agent_push": round(t2 - t1, 3),
            "info_roundtrip_s": round(t3 - t2, 3), "arch": doc["result"]["arch"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--slow", type=float, default=None, help="also bench a Pi limited to this share of one core")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="edgekit-pi-bench-"))
    keys = init_keys(tmp / "signing.ed25519")
    os.environ["EDGEKIT_TRUSTED_KEYS"] = str(keys.public)  # the `local` agent trusts this run's key
    torch.manual_seed(0)
    model = mobilenet_student("mobilenet_v2", width_mult=0.5, num_classes=10, in_channels=3, stem_stride=1).eval()
    x = torch.randn(1, 3, args.size, args.size).numpy()
    bundle = package(model, "onnx", tmp / "onnx", x, name="mbv2-0.5", key=keys.private)
    opts = BenchOptions(runs=args.runs, warmup=3, threads=args.threads, deadline_s=900)

    t0 = time.perf_counter()
    rootfs = build_rootfs()
    lookup_s = time.perf_counter() - t0
    out = {"host": cpu_facts(), "bundle": {"model": "mobilenet_v2 0.5 (stem stride 1)", "input": list(x.shape),
                                           "runtime": "onnxruntime", "threads": args.threads, "runs": args.runs},
           "rootfs": {"key": rootfs.key, "cold_build_s": rootfs.recorded_build_s, "built_now": rootfs.built,
                      "cached_lookup_s": round(lookup_s, 3), "runtimes": rootfs.runtimes}}

    host = bench(LocalDevice(), bundle, opts)
    name = f"pi-bench-{os.getpid()}"
    t0 = time.perf_counter()
    pi = start_pi(name, inventory=tmp / "devices.yaml", trusted_keys=[keys.public])
    out["start"] = {"start_pi_wall_s": round(time.perf_counter() - t0, 2), "sshd_banner_s": pi.start_s}
    try:
        out["ssh_emulated_sshd"] = _connect_and_info(pi.entry(), [keys.public])
        with SshDevice(pi.entry(), trusted_keys=[keys.public]) as dev:
            emu = bench(dev, bundle, opts)
    finally:
        stop_pi(name)
    try:  # the alternative design's SSH leg: a native host sshd (sessions would then exec aarch64 python)
        with SshdFactory(tmp / "sshd") as f:
            out["ssh_native_sshd_x86_python"] = _connect_and_info(f.start(1)[0], [keys.public])
    except SshdMissing as e:
        out["ssh_native_sshd_x86_python"] = {"skipped": str(e)}

    out["bench"] = {"local_x86_64": _figures(host), "emulated_pi_aarch64": _figures(emu),
                    "ratio_emulated_over_host": {"p50": round(emu.p50_ms / host.p50_ms, 2),
                                                 "load": round(emu.load_ms / host.load_ms, 2)}}
    if args.slow:
        slow_name = f"pi-slow-{os.getpid()}"
        spi = start_pi(slow_name, cpu_quota=args.slow, inventory=tmp / "devices.yaml", trusted_keys=[keys.public])
        try:
            with SshDevice(spi.entry(), trusted_keys=[keys.public]) as dev:
                slow = bench(dev, bundle, opts)
        finally:
            stop_pi(slow_name)
        out["bench"][f"emulated_pi_cpu_quota_{args.slow}"] = _figures(slow)
        out["bench"]["ratio_slow_over_emulated"] = {"p50": round(slow.p50_ms / emu.p50_ms, 2)}
    emit(out)


if __name__ == "__main__":
    main()
