"""Compression benchmark (issue 3): torchvision MobileNetV2 at 224x224, each compression method's
artifact size (raw and gzip), MACs, parameters and host latency, as ratios against fp32 on the
same runtime, all measured side by side in ONE run (variants timed round-robin, so load changes
hit all of them alike).

    python benchmarks/compression.py [--size 224] [--rounds 5] [--runs 4] [--threads 1] [--quick]

Weights are random (nothing can be downloaded here): sizes, MACs and latency do not depend on
their values, but accuracy does, so only output agreement (SQNR vs fp32) is given, and it is not
representative of pretrained weights. QAT and distillation need training on real data and are
covered by the tests on digits, not here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kit.compress.cluster import Cluster, cluster  # noqa: E402
from kit.compress.lowrank import LowRank, lowrank  # noqa: E402
from kit.compress.ort_quant import OrtInt8Dynamic, OrtInt8Static, quantize_onnx, quantize_onnx_dynamic  # noqa: E402
from kit.compress.prune import Prune, prune  # noqa: E402
from kit.compress.quantize import Int8Dynamic, Int8Static, quantize  # noqa: E402
from kit.compress.structured import PruneStructured, prune_structured  # noqa: E402
from kit.data import Dataset  # noqa: E402
from kit.evaluate import count_macs_params, gzip_size, sqnr_db  # noqa: E402
from kit.package.executorch import PteRunner, export_pte  # noqa: E402
from kit.package.onnx import OrtRunner, export_onnx  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5, help="round-robin rounds over all variants")
    ap.add_argument("--runs", type=int, default=4, help="timed runs per variant per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="fewer variants (fp32, int8, structured 50%%, ORT int8)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = tvm.mobilenet_v2(weights=None)
    rng = np.random.default_rng(0)
    # Random init leaves BatchNorm at mean 0 / var 1, so activations vanish with depth (outputs
    # ~1e-9) and int8 rounds them to zero. A few forward passes in train mode give BN real
    # statistics: outputs of normal scale, so output SQNR means something. Latency is unaffected.
    with torch.no_grad():
        model.train()
        for _ in range(4):
            model(torch.from_numpy(rng.standard_normal((8, 3, args.size, args.size)).astype(np.float32)))
    model.eval()
    shape = (1, 3, args.size, args.size)
    x = rng.standard_normal(shape).astype(np.float32)
    probe = rng.standard_normal((4, *shape[1:])).astype(np.float32)
    calib = Dataset(rng.standard_normal((8, *shape[1:])).astype(np.float32), None)
    example = (torch.from_numpy(x),)
    with torch.no_grad():
        ref = model(torch.from_numpy(probe)).numpy()
    work = Path(tempfile.mkdtemp(prefix="edgekit-bench-compress-"))
    variants: dict[str, dict] = {}
    runners = {}

    def add(name: str, runtime: str, artifact: Path, module, t0: float, extra: dict | None = None):
        macs, params = count_macs_params(module, shape) if module is not None else (None, None)
        runner = PteRunner(artifact) if artifact.suffix == ".pte" else OrtRunner(artifact, args.threads)
        out = np.concatenate([runner(probe[i : i + 1]) for i in range(len(probe))])
        runners[name] = runner
        variants[name] = {"runtime": runtime, "bytes": artifact.stat().st_size, "gzip_bytes": gzip_size(artifact),
                          "macs": macs, "params": params, "output_sqnr_db_vs_fp32": round(sqnr_db(ref, out), 2),
                          "build_s": round(time.time() - t0, 1), **(extra or {})}
        print(f"built {name}", file=sys.stderr, flush=True)

    def pte(name, producer):
        t0 = time.time()
        module = producer()
        target = module.module if hasattr(module, "float_graph") else module
        path = work / f"{name}.pte"
        deleg = export_pte(target, example, path)
        add(name, "executorch", path, module, t0, {"delegation_coverage": round(deleg.coverage, 4)})

    pte("pte-fp32", lambda: model)
    pte("pte-int8-static-per-channel", lambda: quantize(model, Int8Static(per_channel=True, calib_batches=1, batch_size=8), calib))
    pte("pte-prune-structured-50", lambda: prune_structured(model, PruneStructured(ratio=0.5), torch.from_numpy(x))[0])
    if not args.quick:
        pte("pte-int8-static-per-tensor", lambda: quantize(model, Int8Static(per_channel=False, observer="minmax",
                                                                             calib_batches=1, batch_size=8), calib))
        pte("pte-int8-dynamic-linear", lambda: quantize(model, Int8Dynamic(), None, input_shape=shape))
        pte("pte-prune-structured-30", lambda: prune_structured(model, PruneStructured(ratio=0.3), torch.from_numpy(x))[0])
        pte("pte-prune-unstructured-50", lambda: prune(model, Prune(amount=0.5))[0])
        pte("pte-lowrank-energy-0.9", lambda: lowrank(model, LowRank(energy=0.9))[0])
        pte("pte-cluster-kmeans-16", lambda: cluster(model, Cluster(clusters=16))[0])
        pte("pte-prune-structured-30+int8", lambda: quantize(prune_structured(model, PruneStructured(ratio=0.3),
                                                                              torch.from_numpy(x))[0],
                                                              Int8Static(calib_batches=1, batch_size=8), calib))
    t0 = time.time()
    fp32_onnx = export_onnx(model, example, work / "fp32.onnx")
    add("onnx-fp32", "onnxruntime", fp32_onnx, model, t0)
    t0 = time.time()
    add("onnx-int8-qdq-static", "onnxruntime",
        quantize_onnx(fp32_onnx, OrtInt8Static(max_samples=8), calib, work / "int8.onnx"), model, t0)
    if not args.quick:
        t0 = time.time()
        add("onnx-int8-dynamic", "onnxruntime",
            quantize_onnx_dynamic(fp32_onnx, OrtInt8Dynamic(op_types=["Conv", "MatMul", "Gemm"]), work / "dyn.onnx"), model, t0)

    # Round-robin timing: every variant sees the same machine state in each round.
    samples = {k: [] for k in runners}
    for k, run in runners.items():
        run(x)  # warm-up
    for _ in range(args.rounds):
        for k, run in runners.items():
            for _ in range(args.runs):
                t = time.perf_counter_ns()
                run(x)
                samples[k].append((time.perf_counter_ns() - t) / 1e6)
    for k, v in variants.items():
        v["p50_ms"] = round(float(np.median(samples[k])), 3)
    base = {"executorch": variants["pte-fp32"], "onnxruntime": variants["onnx-fp32"]}
    for k, v in variants.items():
        b = base[v["runtime"]]
        v["size_ratio"] = round(v["bytes"] / b["bytes"], 3)
        v["gzip_ratio"] = round(v["gzip_bytes"] / b["gzip_bytes"], 3)
        v["macs_ratio"] = round(v["macs"] / b["macs"], 3) if v.get("macs") and b.get("macs") else None
        v["latency_ratio"] = round(v["p50_ms"] / b["p50_ms"], 3)
    print(json.dumps({"model": "torchvision:mobilenet_v2 (random weights)", "input": list(shape), "threads": args.threads,
                      "rounds": args.rounds, "runs_per_round": args.runs,
                      "note": "ratios against fp32 on the same runtime; latency p50 on this host, variants timed round-robin",
                      "variants": variants}, indent=2))


if __name__ == "__main__":
    main()
