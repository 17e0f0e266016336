"""Does compression pay off on real models? One run of the kit's recipe search (kit.search.recipes,
the engine of `edgekit search`) per model and scenario on `local`, with the uncompressed fp32
.pte and .onnx benched side by side in the same run (kit.search.payoff) at each thread count.

Models: torchvision MobileNetV2 and EfficientNet-Lite1 with their real ImageNet weights (offline
weight packages, kit.models.pretrained), 224x224. Data: crops of the photos bundled with
scikit-image and scikit-learn (kit.photos), unlabelled, so the budget is agreement with the
original (>= 0.90 by default). Scenarios:

- same-photos (the user-images scenario, a fixed camera): training/calibration and test crops are
  disjoint sets of random crops cut from the same photos;
- unseen-photos (the harder figure): test crops from photos the training never saw (kit.photos'
  CALIB_PHOTOS / TEST_PHOTOS split).

Candidates: every x86-64 recipe with compression (recipes/*pruned*.yaml among them, once they
exist), each at every --threads count. Per model the JSON (benchmarks/results/pays_off-<arch>.json)
holds, per scenario: every candidate (latency, agreement, size, host seconds, speed-up and its noise
verdict against the best uncompressed artifact at the same threads), the front, the chosen one and
its ratio against the best uncompressed path, and whether the target (MobileNetV2 >= 2x,
EfficientNet-Lite1 >= 1.5x, verdict "faster", agreement >= 0.90) is met, by how much if not. The
CPU's flags (AVX-512 VNNI or not) come from /proc/cpuinfo.

    nice -n 5 python benchmarks/pays_off.py [--models mobilenet_v2,efficientnet-lite1]
        [--scenarios same-photos,unseen-photos] [--threads 1,2] [--train 256] [--test 200]
        [--max-host-seconds 1500] [--recipes a,b]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_facts  # noqa: E402

TARGETS = {"mobilenet_v2": 2.0, "efficientnet-lite1": 1.5}
RESULTS = Path(__file__).resolve().parent / "results"


def scenario_splits(name: str, size: int, n_train: int, n_calib: int, n_test: int, preprocess, seed: int = 0):
    """Unlabelled Splits for a scenario (kit.photos.load_photos): train (calibration = its first
    n_calib crops) and test crops, and what they are."""
    from kit.photos import load_photos, photo_sets

    same = name == "same-photos"
    splits = load_photos(size, n_calib, n_test, seed, preprocess, same_photos=same, n_train=n_train)
    train_photos, test_photos = photo_sets(same)
    return splits, {"train_photos": list(train_photos), "test_photos": list(test_photos), "train_crops": n_train,
                    "calib_crops": n_calib, "test_crops": n_test, "size": size, "seed": seed}


def candidate_names(given: str | None) -> list[str]:
    """x86-64 recipes that compress (the uncompressed ones are the search's baselines)."""
    from kit.recipes import available_recipes, load_recipe

    if given:
        return [n for n in given.split(",") if n]
    out = []
    for name, path in sorted(available_recipes().items()):
        r = load_recipe(path)
        if r.device == "x86-64" and r.compress:
            out.append(name)
    return out


def row(c) -> dict:
    keys = ("recipe", "runtime", "format", "threads", "p50_ms", "p99_ms", "agreement", "sqnr_db", "size_bytes",
            "host_seconds", "built_from_cache", "speedup", "verdict", "speedup_ci", "reference", "reference_p50_ms",
            "agreement_lost", "size_ratio", "int8_macs_share", "pruning", "float_islands", "within_budget", "on_front", "chosen", "why_not",
            "skipped", "error")
    return {k: getattr(c, k) for k in keys}


def one_scenario(arch: str, scenario: str, args, tmp: Path) -> dict:
    import torch

    from kit.devices import LocalDevice
    from kit.models import pretrained, pretrained_spec
    from kit.results.store import ResultsStore
    from kit.search.recipes import load_candidate, search

    model = pretrained(arch).eval()
    pre = pretrained_spec(arch).preprocess
    splits, data = scenario_splits(scenario, args.size, args.train, args.calib, args.test, pre)
    overrides = [f"input.image_size={args.size}", "input.channels=3"]
    names = candidate_names(args.recipes)
    recipes = [load_candidate(n, overrides) for n in names]
    threads = [int(t) for t in args.threads.split(",")]
    t0 = time.time()
    with ResultsStore(tmp / f"{arch}-{scenario}.db") as store, LocalDevice() as device:
        torch.set_num_threads(1)  # host builds on one core: the machine is shared
        result = search(model, splits, device, recipes, store=store, out_dir=tmp / f"{arch}-{scenario}",
                        budget_top1_drop=None, budget_agreement=args.agreement, model_name=arch, threads=threads,
                        max_host_seconds=args.max_host_seconds, require_pays_off=True,
                        step=lambda s: print(f"[{arch} {scenario} {time.time() - t0:6.0f}s] {s}", file=sys.stderr, flush=True))
    chosen = result.chosen_candidate
    best_any = min((b for b in result.baselines if b.p50_ms), key=lambda b: b.p50_ms, default=None)
    target = TARGETS.get(arch)
    ratio = chosen.speedup if chosen is not None else None
    met = bool(chosen is not None and not chosen.uncompressed and ratio is not None and target is not None
               and ratio >= target and chosen.verdict == "faster" and (chosen.agreement or 0) >= args.agreement)
    return {
        "data": data, "candidates_tried": names, "threads": threads, "budget_agreement": args.agreement,
        "max_host_seconds": args.max_host_seconds, "seconds": round(result.seconds, 1),
        "host_seconds_building": round(result.host_seconds, 1),
        "baselines": [row(b) for b in result.baselines],
        "references": {str(k): v for k, v in result.references.items()},
        "candidates": [row(c) for c in result.candidates],
        "front": [row(c) for c in result.front],
        "chosen": None if chosen is None else row(chosen), "chosen_why": result.chosen_why,
        "ratio_vs_best_uncompressed_same_threads": None if ratio is None else round(ratio, 3),
        "ratio_vs_best_uncompressed_any_threads": (round(best_any.p50_ms / chosen.p50_ms, 3)
                                                   if chosen is not None and best_any and chosen.p50_ms else None),
        "best_uncompressed_any_threads": None if best_any is None else best_any.label,
        "target": {"speedup": target, "verdict": "faster", "agreement": args.agreement, "met": met,
                   "short_by": None if met or ratio is None or target is None else round(target - ratio, 3)},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mobilenet_v2,efficientnet-lite1")
    p.add_argument("--scenarios", default="same-photos,unseen-photos")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--train", type=int, default=256)
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--agreement", type=float, default=0.90)
    p.add_argument("--max-host-seconds", type=float, default=1500.0)
    p.add_argument("--recipes", default=None, help="Comma-separated candidate recipes (default: every compressing x86-64 recipe).")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    import signal

    import torch

    from kit.package.signing import ensure_keys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still removes its temporary folder

    ensure_keys()
    machine = {**cpu_facts(), "python": platform.python_version(), "torch": torch.__version__}
    docs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in args.scenarios.split(","):
            for arch in args.models.split(","):
                doc = docs.setdefault(arch, {"benchmark": "pays_off", "model": f"pretrained:{arch}", "machine": machine,
                                             "scenarios": {}})
                try:
                    doc["scenarios"][scenario] = one_scenario(arch, scenario, args, Path(tmp))
                except Exception as e:  # one failing scenario is a result, not the end of the run
                    doc["scenarios"][scenario] = {"error": f"{type(e).__name__}: {e}"}
                args.out.mkdir(parents=True, exist_ok=True)
                path = args.out / f"pays_off-{arch}.json"
                path.write_text(json.dumps(doc, indent=2, default=str))
                print(json.dumps({arch: {scenario: {k: doc["scenarios"][scenario].get(k) for k in (
                    "ratio_vs_best_uncompressed_same_threads", "chosen_why", "target", "error")}}}, default=str), flush=True)
    print(json.dumps(docs, indent=2, default=str))


if __name__ == "__main__":
    main()
