"""Pruning + distillation from the original on the real MobileNetV2 (issue 20, compress side):
the fixed-camera scenario (train and test crops disjoint, cut from the same bundled photos, no
labels), 224x224. Per uniform structured-pruning ratio: top-1 agreement with the original on the
test crops after pruning alone and after pruning + distillation (kit.compress.repair: soft targets
from the original, penultimate-feature hint, CPU augmentation, early stopping on a held-out share
of the train crops), MACs kept, host seconds of the repair; the same on crops of photos the
training never saw (kit.photos' test photos) as the harder figure. `--netadapt R` adds the
sensitivity-driven NetAdapt loop to R of the MACs. `--expansion` instead prunes each ratio of the
inverted residuals' hidden (expansion) channels and compares pruning alone, + least-squares
reconstruction (kit.compress.reconstruct), + reconstruction and distillation.

    nice -n 5 python benchmarks/prune_distill.py [--size 224] [--train 256] [--test 96] [--ratios 0.1 0.2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_facts, emit  # noqa: E402


def fixed_camera(size: int, n_train: int, n_test: int, seed: int = 0):
    from kit.models import pretrained_spec
    from kit.photos import load_photos

    return load_photos(size, n_train, n_test, seed, pretrained_spec("mobilenet_v2").preprocess, same_photos=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--train", type=int, default=256)
    ap.add_argument("--test", type=int, default=96)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-seconds", type=float, default=900)
    ap.add_argument("--netadapt", type=float, default=None)
    ap.add_argument("--expansion", action="store_true", help="expansion channels: prune / + reconstruct / + distill")
    args = ap.parse_args()

    import torch

    from kit.compress.repair import teacher_top1, top1_agreement
    from kit.compress.structured import PruneStructured, prune_structured
    from kit.evaluate import count_macs
    from kit.models import pretrained, pretrained_spec
    from kit.photos import load_photos

    torch.set_num_threads(args.threads)
    model = pretrained("mobilenet_v2")
    splits = fixed_camera(args.size, args.train, args.test)
    unseen = load_photos(args.size, 1, args.test, seed=0, preprocess=pretrained_spec("mobilenet_v2").preprocess).test
    example = torch.zeros(1, 3, args.size, args.size)
    refs = {"test": teacher_top1(model, splits.test.x), "unseen_photos": teacher_top1(model, unseen.x)}
    sets = {"test": splits.test.x, "unseen_photos": unseen.x}
    macs0 = count_macs(model, (1, 3, args.size, args.size))

    def agree(m):
        return {k: round(top1_agreement(m, refs[k], sets[k]), 4) for k in sets}

    rows = []
    for ratio in args.ratios if args.expansion else []:
        import copy

        from kit.compress.netadapt import prune_unit, units
        from kit.compress.reconstruct import reconstruct
        from kit.compress.repair import RepairConfig, distill_repair, split_holdout

        raw = copy.deepcopy(model)
        for u in [u for u in units(raw, example) if u.endswith("conv.1.0")]:  # the expansions' depthwise roots
            prune_unit(raw, example, u, ratio)
        rebuilt, t0 = copy.deepcopy(raw), time.time()
        fit, _ = split_holdout(len(splits.train), RepairConfig.holdout, 0)  # the distillation's hold-out stays unseen
        rec = reconstruct(rebuilt, model, splits.train.x[fit])
        both = copy.deepcopy(rebuilt)
        _, rep = distill_repair(both, model, splits.train, RepairConfig(epochs=args.epochs, max_seconds=args.max_seconds))
        rows.append({"method": "expansion", "ratio": ratio, "macs_ratio": round(count_macs(raw, tuple(example.shape)) / macs0, 4),
                     "prune_only": agree(raw), "prune_reconstruct": agree(rebuilt), "prune_reconstruct_distill": agree(both),
                     "reconstruct_seconds": rec["seconds"], "host_seconds": round(time.time() - t0, 1), "repair": rep})
        print(rows[-1], file=sys.stderr, flush=True)
    for ratio in [] if args.expansion else args.ratios:
        raw, _ = prune_structured(model, PruneStructured(ratio=ratio, repair="none", reconstruct=False), example)
        t0 = time.time()
        fixed, info = prune_structured(model, PruneStructured(ratio=ratio, epochs=args.epochs, lr=3e-3,
                                                              max_seconds=args.max_seconds), example, splits.train)
        rows.append({"method": "uniform", "ratio": ratio, "macs_ratio": round(count_macs(raw, tuple(example.shape)) / macs0, 4),
                     "prune_only": agree(raw), "prune_distill": agree(fixed), "host_seconds": round(time.time() - t0, 1),
                     "repair": info["repair"]})
        print(rows[-1], file=sys.stderr, flush=True)
    if args.netadapt:
        from kit.compress.netadapt import netadapt

        t0 = time.time()
        cfg = PruneStructured(target_macs_ratio=args.netadapt, min_agreement=0.5, epochs=args.epochs, lr=3e-3,
                              adapt={"scan_samples": 32, "ratios": [0.3], "step": 0.15, "threads": 1})
        pruned, info = netadapt(model, model, splits.train, cfg, example,
                                progress=lambda *a: print(a, round(time.time() - t0), file=sys.stderr, flush=True))
        rows.append({"method": "netadapt", "target_macs_ratio": args.netadapt,
                     "macs_ratio": round(info["final"]["macs"] / info["original"]["macs"], 4),
                     "ms_ratio": round(info["final"]["ms"] / info["original"]["ms"], 4), "prune_distill": agree(pruned),
                     "rounds": len(info["rounds"]), "stopped": info["stopped"], "host_seconds": round(time.time() - t0, 1)})
    emit({"benchmark": "prune_distill", "model": "mobilenet_v2", "size": args.size, "train_crops": args.train,
          "test_crops": args.test, "threads": args.threads, "cpu": cpu_facts(), "rows": rows})


if __name__ == "__main__":
    main()
