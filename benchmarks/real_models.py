"""Real pretrained models, naive int8 (issue 14's baseline): MobileNetV2 and EfficientNet-Lite1
with their real ImageNet weights (offline weight packages, kit.models.pretrained) on crops of
the bundled photos (kit.photos: 64 calibration crops from some photos, 200 test crops from
others, 224x224), each built by the shipped recipes and timed by the device agent on `local`:

- .pte: x86-64-fp32 vs x86-64-int8 naive (MinMax, no correction) vs x86-64-int8 as shipped (the kit's best)
- .onnx: x86-64-fp32 with runtime=onnxruntime vs x86-64-int8-ort naive vs as shipped (ORT QDQ, per-channel, u8)

Per model and runtime: agreement with eager fp32 on all test crops and on the confident ones
(fp32 top-1 probability > 0.5), output SQNR, file size, p50 latency fp32 vs int8 side by side
(one run, same device, same threads, fp32 and int8 timed in alternation), compress time. Without labels, agreement is the measure.

    python benchmarks/real_models.py [--size 224] [--calib 64] [--test 200] [--runs 50] [--models ...] [--mixed] [--nearest]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_facts, emit  # noqa: E402

RUNTIMES = {"pte": ("x86-64-fp32", [], "x86-64-int8"),
            "onnx": ("x86-64-fp32", ["runtime=onnxruntime", "format=onnx"], "x86-64-int8-ort")}
# the naive baseline: the same int8 recipe with plain MinMax ranges and no weight/bias correction
NAIVE = {"pte": ["compress.0.observer=minmax", "compress.0.bias_correction=false"],
         "onnx": ["compress.0.calibration=MinMax", "compress.0.bias_correction=false"]}
# --mixed: the shipped recipe with accuracy-aware mixed precision (kit.compress.mixed_precision)
MIXED = ["compress.0.keep_float=auto"]
# --nearest: the shipped recipe with round-to-nearest weights instead of its default input-aware
# GPTQ rounding (kit.compress.gptq_rounding): what GPTQ buys, side by side
NEAREST = ["compress.0.rounding=nearest"]


def find_key(doc, key):
    """First value of `key` anywhere in a nested report (the quantize step's info)."""
    if isinstance(doc, dict):
        if key in doc:
            return doc[key]
        doc = list(doc.values())
    if isinstance(doc, list):
        for v in doc:
            found = find_key(v, key)
            if found is not None:
                return found
    return None


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def one(model, splits, fp32_logits, recipe_name, extra, size, threads, out) -> dict:
    from kit.package import runner_for
    from kit.pipeline.build import build
    from kit.recipes.loader import load_recipe

    overrides = [f"input.image_size={size}", "input.channels=3", "budget.top1_drop=100", f"threads={threads}"]
    recipe = load_recipe(recipe_name, overrides=overrides + extra)
    t0 = time.perf_counter()
    built = build(recipe, model, splits, out, name=recipe_name, cache=False, override_budget=True)
    seconds = time.perf_counter() - t0
    art = built.report["artifact"]
    run = runner_for(art["file"], threads)
    logits = np.concatenate([run(x[None]) for x in splits.test.x])
    confident = softmax(fp32_logits).max(1) > 0.5
    match = fp32_logits.argmax(1) == logits.argmax(1)
    return {"bundle": str(built.bundle_path), "recipe": recipe_name, "overrides": extra, "file_bytes": art["bytes"], "compress_s": round(seconds, 1),
            "agreement": round(float(match.mean()), 4), "agreement_confident": round(float(match[confident].mean()), 4) if confident.any() else None,
            "kit_agreement": art["agreement"]["top1_match"], "sqnr_db": round(float(art["agreement"]["sqnr_db"]), 2),
            "int8_macs_share": find_key(built.report, "int8_macs_share"),
            "activation_ranges": (find_key(built.report, "activation_ranges") or {}).get("chosen"),
            "per_tensor_ranges": {k: v for k, v in ((find_key(built.report, "activation_ranges") or {}).get("per_tensor")
                                                    or {}).items() if k != "moves"} or None,
            **mixed_summary(find_key(built.report, "mixed_precision")),
            }


def mixed_summary(mp: dict | None) -> dict:
    """The float layers keep_float=auto chose, why, and whether the held-out targets held."""
    if not mp:
        return {}
    return {"float_layers": mp["chosen"]["float_layers"], "held_out_met": mp["met"], "held_out": mp["chosen"],
            "held_out_all_int8": mp["all_int8"], "mp_trials": mp["trials"],
            "why": {k["layer"]: k["why"] for k in mp["kept_float"]}}


def bench_side_by_side(row: dict, runs: int, threads: int, rounds: int) -> None:
    """fp32 and int8 timed in alternation, `rounds` times: the machine's load hits both alike.
    Each kind's p50_ms is the median of its rounds' p50s."""
    from kit.devices.bench import BenchOptions, bench
    from kit.devices.local import LocalDevice
    from kit.package.bundle import Bundle

    kinds = [k for k in ("fp32", "naive", "best", "mixed", "nearest") if "bundle" in row.get(k, {})]
    for _ in range(rounds):
        for kind in kinds:
            m = bench(LocalDevice(), Bundle.load(row[kind]["bundle"]), BenchOptions(runs=runs, warmup=5, threads=threads))
            row[kind].setdefault("p50_rounds_ms", []).append(round(m.p50_ms, 3))
            row[kind].setdefault("cv_rounds", []).append(round(m.cv, 3))
            row[kind]["reference_passed"] = bool(m.reference_passed and row[kind].get("reference_passed", True))
    for kind in kinds:
        row[kind]["p50_ms"] = round(float(np.median(row[kind]["p50_rounds_ms"])), 3)
        del row[kind]["bundle"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mobilenet_v2,efficientnet-lite1")
    p.add_argument("--runtimes", default="pte,onnx")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="fp32/int8 bench rounds, alternating")
    p.add_argument("--mixed", action="store_true", help="also build the shipped int8 recipe with keep_float=auto")
    p.add_argument("--nearest", action="store_true", help="also build the shipped int8 recipe with rounding=nearest")
    p.add_argument("--skip-best", action="store_true", help="leave out the shipped recipe's column (with --mixed)")
    args = p.parse_args()
    import torch

    from kit.models import pretrained, pretrained_spec
    from kit.package.signing import ensure_keys
    from kit.photos import CALIB_PHOTOS, TEST_PHOTOS, load_photos

    ensure_keys()
    torch.set_num_threads(args.threads)
    doc = {"benchmark": "real_models", "machine": {**cpu_facts(), "python": platform.python_version(),
                                                   "torch": torch.__version__},
           "data": {"calib_photos": CALIB_PHOTOS, "test_photos": TEST_PHOTOS, "calib_crops": args.calib,
                    "test_crops": args.test, "size": args.size, "seed": 0},
           "threads": args.threads, "bench_runs": args.runs, "bench_rounds": args.rounds, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            model = pretrained(name)
            splits = load_photos(args.size, args.calib, args.test, seed=0, preprocess=pretrained_spec(name).preprocess)
            with torch.no_grad():
                fp32 = np.concatenate([model(torch.from_numpy(x[None])).numpy() for x in splits.test.x])
            entry = {"preprocess": pretrained_spec(name).preprocess,
                     "confident_crops": int((softmax(fp32).max(1) > 0.5).sum()), "runtimes": {}}
            for rt, (fp32_recipe, extra, int8_recipe) in RUNTIMES.items():
                if rt not in args.runtimes.split(","):
                    continue
                row = {}
                kinds = [("fp32", fp32_recipe, extra), ("naive", int8_recipe, NAIVE[rt]), ("best", int8_recipe, []),
                         ("mixed", int8_recipe, MIXED), ("nearest", int8_recipe, NEAREST)]
                kinds = [k for k in kinds if (k[0] != "mixed" or args.mixed) and (k[0] != "nearest" or args.nearest)
                         and (k[0] != "best" or not args.skip_best)]
                for kind, recipe_name, ov in kinds:
                    try:
                        row[kind] = one(model, splits, fp32, recipe_name, ov, args.size, args.threads,
                                        Path(tmp) / f"{name}-{rt}-{kind}")
                    except Exception as e:  # one failing build is a result, not the end of the run
                        row[kind] = {"recipe": recipe_name, "error": f"{type(e).__name__}: {e}"[:500],
                                     "where": traceback.format_exc().strip().splitlines()[-3:]}
                bench_side_by_side(row, args.runs, args.threads, args.rounds)
                if all("p50_ms" in row.get(k, {}) for k in ("fp32", "naive", "best")):
                    for k in ("naive", "best"):
                        row[f"{k}_speedup_vs_fp32"] = round(row["fp32"]["p50_ms"] / row[k]["p50_ms"], 3)
                        row[f"{k}_size_ratio"] = round(row[k]["file_bytes"] / row["fp32"]["file_bytes"], 3)
                    row["best_latency_vs_naive"] = round(row["best"]["p50_ms"] / row["naive"]["p50_ms"], 3)
                    row["best_sqnr_gain_db"] = round(row["best"]["sqnr_db"] - row["naive"]["sqnr_db"], 2)
                    row["best_agreement_gain"] = round(row["best"]["agreement"] - row["naive"]["agreement"], 4)
                if all("p50_ms" in row.get(k, {}) for k in ("naive", "mixed")):
                    row["mixed_latency_vs_naive"] = round(row["mixed"]["p50_ms"] / row["naive"]["p50_ms"], 3)
                entry["runtimes"][rt] = row
                print(f"{name} {rt}: {row}", file=sys.stderr)
            doc["models"][name] = entry
    emit(doc)


if __name__ == "__main__":
    main()
