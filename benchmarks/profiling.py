"""Per-operator profiles and the memory split (issue 16), side by side in one run. Prints JSON.

Models: torchvision MobileNetV2 and MobileNetV3-Small at 224 (ImageNet weights when
kit.models.pretrained has them, else the architecture with random weights), fp32 and int8, on
both runtimes: .pte (XNNPACK, PT2E int8, the native runner) and .onnx (ORT, QDQ static int8 via
onnxruntime.quantization). Calibration: kit.photos crops when available, else random inputs.
Per artifact on `local`: top-5 operators by share, the sum of operator times against the
profiled mean per run, the timed p50 of a plain bench and of a `--profile` bench in the same run
(alternating, with the kit's noise verdict: profiling must not change the timed figures, since the
profiled runs happen after the timed ones in their own process), and the memory split. Ends with
the MobileNetV3-Small ORT int8 vs fp32 per-operator comparison (kit.profiles.compare_ops).

    python benchmarks/profiling.py [--runs 30] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _calib():
    from kit.data import Dataset

    try:
        from kit.photos import load_photos

        return load_photos(224, n_calib=8, n_test=1).calib, "kit.photos crops"
    except Exception:  # noqa: BLE001
        x = np.random.default_rng(0).standard_normal((8, 3, 224, 224)).astype(np.float32)
        return Dataset(x, np.zeros(8, np.int64)), "random normal inputs"


def _net(arch: str):
    import torch
    import torchvision.models as tvm

    try:
        from kit.models import pretrained

        return pretrained(arch), "ImageNet"
    except Exception as e:  # noqa: BLE001
        torch.manual_seed(0)
        return getattr(tvm, arch)(weights=None).eval(), f"random ({type(e).__name__})"


def _ort_int8(fp32_bundle, calib, out: Path) -> Path:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = onnx.load(str(fp32_bundle.model_file)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: calib.x[i:i + 1]} for i in range(len(calib.x))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32_bundle.model_file), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
    return out


def _artifacts(tmp: Path):
    from kit.compress.quantize import Int8Static, quantize
    from kit.package import package

    calib, calib_src = _calib()
    x = calib.x[:1]
    loose = {"atol": 100.0, "rtol": 10.0}  # int8 vs its own reference: the bench compares it to itself
    for arch in ("mobilenet_v2", "mobilenet_v3_small"):
        net, weights = _net(arch)
        yield f"{arch}-pte-fp32", package(net, "executorch", tmp / f"{arch}-pte-fp32", x, name=arch), weights, calib_src
        q = quantize(net, Int8Static(per_channel=True, calib_batches=2, batch_size=4), calib)
        yield f"{arch}-pte-int8", package(q, "executorch", tmp / f"{arch}-pte-int8", x, name=arch, tolerance=loose), weights, calib_src
        fp = package(net, "onnx", tmp / f"{arch}-onnx-fp32", x, name=arch)
        yield f"{arch}-onnx-fp32", fp, weights, calib_src
        q_path = _ort_int8(fp, calib, tmp / f"{arch}-int8.onnx")
        yield f"{arch}-onnx-int8", package(q_path, "onnx", tmp / f"{arch}-onnx-int8", x, name=arch, tolerance=loose), weights, calib_src


def _one(bundle, runs: int, threads: int) -> dict:
    from kit.devices.bench import BenchOptions, bench
    from kit.devices.local import LocalDevice
    from kit.profiles import op_time_ms, top_rows
    from kit.results.compare import latency_verdict

    dev = LocalDevice()
    plain, profiled = [], []
    for _ in range(2):  # alternate so drift on a shared machine hits both alike
        plain.append(bench(dev, bundle, BenchOptions(runs=runs, threads=threads)))
        profiled.append(bench(dev, bundle, BenchOptions(runs=runs, threads=threads, profile=True, profile_runs=10)))
    pa = [s for m in plain for s in m.raw["samples_ms"]]
    pb = [s for m in profiled for s in m.raw["samples_ms"]]
    v = latency_verdict(pa, pb)
    prof = profiled[-1].profile
    return {
        "pte_runtime": profiled[-1].raw.get("pte_runtime"),
        "timed_p50_ms": {"plain": float(np.median(pa)), "with_profile": float(np.median(pb)),
                         "ratio": v.ratio, "verdict": v.verdict, "ci": [v.ci_low, v.ci_high]},
        "profiled_run_ms": prof.get("run_ms"), "sum_of_op_ms": op_time_ms(prof),
        "op_sum_vs_profiled_run": op_time_ms(prof) / prof["run_ms"] if prof.get("run_ms") else None,
        "op_sum_vs_timed_mean": op_time_ms(prof) / profiled[-1].mean_ms,
        "top5": [{"name": r["name"], "type": r["type"], "share": r["share"], "total_ms": r["total_ms"],
                  "quantized": r["quantized"]} for r in top_rows(prof, 5)],
        "note": prof.get("note"), "error": prof.get("error"), "memory": profiled[-1].memory,
        "size_mb": bundle.manifest["model"]["size"] / 2**20, "_profile": prof,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    from kit.profiles import compare_ops

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, bundle, weights, calib_src in _artifacts(Path(tmp)):
            results[key] = {"weights": weights, "calibration": calib_src, **_one(bundle, a.runs, a.threads)}
            print(f"{key}: done", file=sys.stderr)
    v3 = compare_ops(results["mobilenet_v3_small-onnx-fp32"]["_profile"], results["mobilenet_v3_small-onnx-int8"]["_profile"])
    for r in results.values():
        r.pop("_profile")
    doc = {"benchmark": "profiling", "machine": platform.machine(), "runs": a.runs, "threads": a.threads,
           "artifacts": results, "mobilenet_v3_small_ort_int8_vs_fp32": v3}
    text = json.dumps(doc, indent=2)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
