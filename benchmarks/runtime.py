"""Runtime benchmark (issue 9): eager PyTorch vs ExecuTorch/XNNPACK vs ONNX Runtime, fp32 and int8,
plus the compression suite's pruned and distilled-student variants, measured in ONE run on the
same CPU with the same thread count. Artifacts are timed by the real device agent on the `local`
device (the product's own path); eager PyTorch by the same timing loop in-process.

    python benchmarks/runtime.py [--models mobilenet_v2,mobilenet_v3_small,resnet18] [--size 224] [--threads 2]

Prints JSON: p50 per variant, ratios against eager fp32 and .pte fp32, delegation coverage of each
.pte, and the distance to a compute roofline lower bound (MACs x 2 / peak FLOP/s). The peak is
the larger of the theoretical fp32 peak (threads x clock x SIMD lanes x 2 FMA units x 2 ops, from
/proc/cpuinfo) and a measured one (best of 8 fp32 1536^3 GEMMs in torch at the same thread count).
Weights are random (nothing can be downloaded here): latency does not depend on their values.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_facts, emit, measured_peak_gflops, theoretical_peak_gflops, time_fn  # noqa: E402

from kit.compress import Int8Static, OrtInt8Static, quantize, quantize_onnx  # noqa: E402
from kit.compress.ort_quant import auto_activation_type  # noqa: E402
from kit.data import Dataset  # noqa: E402
from kit.evaluate import count_macs  # noqa: E402
from kit.devices import BenchOptions, LocalDevice, bench  # noqa: E402
from kit.models import mobilenet_student  # noqa: E402
from kit.package import package  # noqa: E402


def _variants_pruned(model, example):
    """Structured channel pruning from the compression suite (if present in this checkout)."""
    from kit.compress.structured import PruneStructured, prune_structured

    pruned, _info = prune_structured(model, PruneStructured(ratio=0.5, round_to=8), torch.from_numpy(example))
    return pruned


def bench_model(name: str, size: int, threads: int, runs: int, work: Path, device) -> dict:
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = tvm.get_model(name, weights=None).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    calib = Dataset(np.random.default_rng(1).standard_normal((16, 3, size, size)).astype(np.float32), None)
    macs = count_macs(model, x.shape)
    torch.set_num_threads(threads)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        eager = time_fn(lambda: model(xt), runs=runs)
    out = {"macs": macs, "params": sum(p.numel() for p in model.parameters()), "variants": {"eager-fp32": eager}}
    opts = BenchOptions(runs=runs, warmup=5, threads=threads)
    build_s = {}

    def measure(variant, producer, target):
        t0 = time.time()
        b = package(producer(), target, work / f"{name}-{variant}", x, name=f"{name}-{variant}")
        build_s[variant] = round(time.time() - t0, 1)
        m = bench(device, b, opts)
        row = {"p50_ms": m.p50_ms, "p90_ms": m.p90_ms, "cv": m.cv, "size_bytes": b.manifest["model"]["size"],
               "load_ms": m.load_ms, "reference_passed": m.reference_passed,
               # the agent's own timing cost per run (a timed no-op), as a fraction of this p50 (target < 1%)
               "agent_overhead_fraction": (m.raw.get("agent_overhead") or {}).get("fraction_of_p50")}
        if "delegation" in b.manifest:
            row["delegation_coverage"] = b.manifest["delegation"]["coverage"]
            row["non_delegated_ops"] = b.manifest["delegation"]["non_delegated_ops"]
        out["variants"][variant] = row
        return b

    measure("pte-fp32", lambda: model, "executorch")
    measure("pte-int8", lambda: quantize(model, Int8Static(per_channel=True, calib_batches=1, batch_size=16), calib), "executorch")
    fp32_onnx = measure("ort-fp32", lambda: model, "onnx")
    q_path = work / f"{name}-int8.onnx"
    # activation_type="auto": uint8 on x86-64, int8 on ARM (kit.compress.ort_quant explains why).
    measure("ort-int8-qdq", lambda: quantize_onnx(fp32_onnx.model_file, OrtInt8Static(max_samples=16), calib, q_path), "onnx")
    if auto_activation_type() != "int8":  # side by side: what ORT's s8s8 default would have given here
        q8 = work / f"{name}-int8-s8s8.onnx"
        measure("ort-int8-qdq-s8s8", lambda: quantize_onnx(fp32_onnx.model_file, OrtInt8Static(max_samples=16, activation_type="int8"),
                                                           calib, q8), "onnx")
    # Structured pruning (fine-tuning aside, the pruned net's latency is what the device sees).
    pruned = _variants_pruned(model, x)
    out["pruned_macs"] = count_macs(pruned, x.shape)
    measure("pte-fp32-pruned50", lambda: pruned, "executorch")
    if name.startswith("mobilenet_v2"):
        student = mobilenet_student("mobilenet_v2", 0.5, 1000).eval()
        out["student_macs"] = count_macs(student, x.shape)
        measure("pte-fp32-student-w0.5", lambda: student, "executorch")
    out["build_s"] = build_s
    ev, pte = out["variants"]["eager-fp32"]["p50_ms"], out["variants"]["pte-fp32"]["p50_ms"]
    for v, row in out["variants"].items():
        row["speedup_vs_eager"] = round(ev / row["p50_ms"], 3)
        row["speedup_vs_pte_fp32"] = round(pte / row["p50_ms"], 3)
    out["not_faster_than_twin"] = not_faster(out["variants"])
    return out


def twin_of(variant: str) -> str | None:
    """The uncompressed artifact a compressed variant must beat: same runtime, fp32."""
    if variant.startswith("pte-") and variant != "pte-fp32":
        return "pte-fp32"
    if variant.startswith("ort-") and variant != "ort-fp32":
        return "ort-fp32"
    return None


def not_faster(variants: dict) -> list[str]:
    """Say it plainly wherever compression did not buy speed on this CPU (issue 9)."""
    lines = []
    for v, row in variants.items():
        twin = twin_of(v)
        if twin in variants and row["p50_ms"] >= variants[twin]["p50_ms"]:
            lines.append(f"{v} is {variants[twin]['p50_ms'] / row['p50_ms']:.2f}x {twin} on this CPU "
                         f"(p50 {row['p50_ms']:.2f} ms vs {variants[twin]['p50_ms']:.2f} ms)")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mobilenet_v2,mobilenet_v3_small,resnet18")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=30)
    args = p.parse_args()
    from kit.package.signing import ensure_keys

    ensure_keys()  # bundles are signed; like the demo, make the kit's key pair on first use
    facts = cpu_facts()
    peak = measured_peak_gflops(args.threads)
    theory = theoretical_peak_gflops(facts, args.threads)
    doc = {"cpu": facts, "threads": args.threads, "input": [1, 3, args.size, args.size],
           "peak_gflops": {"measured_gemm": round(peak, 1), "theoretical": theory},
           "ort_activation_type": auto_activation_type(),
           "note": "x_roofline = p50 / (2 x MACs / fp32 peak), peak = max(theoretical, measured GEMM); int8 rows "
                   "can go below 1 since int8 kernels are not bound by the fp32 roof", "models": {}}
    with tempfile.TemporaryDirectory() as tmp, LocalDevice() as device:
        for name in args.models.split(","):
            r = bench_model(name, args.size, args.threads, args.runs, Path(tmp), device)
            # A lower bound must use the highest throughput the CPU can reach: the theoretical peak
            # (the measured GEMM is a practical roof, and real kernels can beat it).
            roof = max(theory or 0.0, peak)
            bound_ms = 2 * r["macs"] / (roof * 1e9) * 1e3
            r["roofline_bound_ms"] = round(bound_ms, 3)
            for variant, row in r["variants"].items():
                # pruned and student variants do less work: judge each against its own MACs
                macs = r.get("pruned_macs") if "pruned" in variant else r.get("student_macs") if "student" in variant else r["macs"]
                row["roofline_bound_ms"] = round(2 * macs / (roof * 1e9) * 1e3, 3)
                row["x_roofline"] = round(row["p50_ms"] / row["roofline_bound_ms"], 2)
            doc["models"][name] = r
            print(f"# {name} done", file=sys.stderr)
    emit(doc)


if __name__ == "__main__":
    main()
