"""Task models benchmark (issue #15): per task model, the fp32 vs int8 task metric, and int8/fp32
size and latency ratios on both runtimes (.pte through ExecuTorch/XNNPACK, .onnx through ONNX
Runtime), all measured in ONE run on the same CPU by the device agent on `local`.

    python benchmarks/tasks.py [--threads 1] [--runs 30] [--models tinyyolo,tinyseg,ssdlite,lraspp]

Models: the YOLO-style TinyYolo and the TinySeg segmenter trained here on synthetic shapes (metric
against the labels: mAP@0.5 / mIoU), torchvision SSDlite320-MobileNetV3 (raw head, 160 px) and
LRASPP-MobileNetV3 (96 px) with random weights (nothing can be downloaded here), whose metric is
measured against the fp32 model's own outputs (pseudo-labels: its 10 best boxes per image / its
masks; BatchNorm statistics recomputed on the training images first, see _bn_recalibrate), i.e. how
much of the fp32 result int8 keeps; `output_sqnr_db` (int8 vs fp32 raw output)
says the same for any weights. Prints JSON.
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
from _common import cpu_facts, emit  # noqa: E402

from kit.devices import BenchOptions, LocalDevice, bench  # noqa: E402
from kit.evaluate import agreement, outputs  # noqa: E402
from kit.package import Bundle, package, runner_for  # noqa: E402
from kit.pipeline.build import compress_job  # noqa: E402
from kit.recipes import load_recipe  # noqa: E402
from kit.splits import Dataset, Splits  # noqa: E402
from kit.tasks import metrics  # noqa: E402
from kit.tasks.shapes import make_shapes  # noqa: E402
from kit.tasks.spec import Task  # noqa: E402

INT8 = {"pte": ("x86-64-int8", ["compress.0.calib_batches=4"]), "onnx": ("x86-64-int8-ort", ["compress.0.max_samples=32"])}


def _models(names: list[str], size: int) -> dict:
    from kit.tasks.detect import train_detector
    from kit.tasks.segment import lraspp, train_segmenter
    from kit.tasks.ssd import postprocess as ssd_post
    from kit.tasks.ssd import ssdlite_raw

    out = {}
    train = make_shapes(384, size, seed=1) if {"tinyyolo", "tinyseg"} & set(names) else None
    if "tinyyolo" in names:
        out["tinyyolo"] = dict(model=train_detector(train.images, train.targets, steps=300), size=size, labelled=True,
                               task=Task(kind="detection", params={"image_size": size}), metric=metrics.map50)
    if "tinyseg" in names:
        out["tinyseg"] = dict(model=train_segmenter(train.images, train.masks, steps=200), size=size, labelled=True,
                              task=Task(kind="segmentation"), metric=metrics.miou)
    if "ssdlite" in names:
        raw = ssdlite_raw(160, num_classes=4)

        def ssd_map(out_, labels, reference=None, task=None, anchors=raw.anchors):
            # random weights: no fp32 box is confident (class scores ~1/C), so the pseudo-labels are
            # the fp32 model's 10 best boxes per image after NMS, and int8 is scored on finding them in its own 10
            pseudo = [{"boxes": d["boxes"], "labels": d["labels"]} for d in ssd_post(reference, anchors, conf=0.0, max_det=10)]
            preds = ssd_post(out_, anchors, conf=0.0, max_det=10)
            return metrics.map_of(preds, pseudo, "map_50")
        out["ssdlite"] = dict(model=raw, size=160, labelled=False, task=None, metric=ssd_map)
    if "lraspp" in names:
        out["lraspp"] = dict(model=lraspp(num_classes=3), size=96, labelled=False, task=Task(kind="segmentation"),
                             metric=metrics.pixel_agreement)
    return out


def _bn_recalibrate(model: torch.nn.Module, x: np.ndarray) -> torch.nn.Module:
    """Random weights with default BatchNorm statistics collapse MobileNetV3's activations (SSDlite's
    raw head came out constant, std 1e-15; LRASPP's argmax one class everywhere), so any fp32 vs int8
    comparison would be trivially equal. Recomputing the BN running statistics on a few training
    images (no weight changes) gives outputs that vary with the input."""
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None  # cumulative average over the batches
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 8):
            model(torch.from_numpy(x[i:i + 8]))
    return model.eval()


def _timed(bundle_path: Path, threads: int, runs: int) -> dict:
    bundle = Bundle.load(bundle_path)
    m = bench(LocalDevice(), bundle, BenchOptions(runs=runs, warmup=3, threads=threads))
    return {"p50_ms": round(m.p50_ms, 3), "bytes": int(bundle.manifest["model"]["size"])}


def run_model(name: str, spec: dict, threads: int, runs: int, work: Path) -> dict:
    size = spec["size"]
    data = make_shapes(96, size, seed=2)
    model = spec["model"].eval() if spec["labelled"] else _bn_recalibrate(spec["model"], data.images[:16])
    labels = (data.targets[48:] if spec["task"] and spec["task"].kind == "detection" else data.masks[48:]) \
        if spec["labelled"] else None
    test = Dataset(data.images[48:], None)
    splits = Splits(train=Dataset(data.images[:16], None), calib=Dataset(data.images[16:48], None), test=test,
                    num_classes=0, name="shapes")
    row = {"input": [1, 3, size, size], "metric_against": "labels" if spec["labelled"] else "fp32 outputs"}
    for runtime, target in (("pte", "executorch"), ("onnx", "onnx")):
        fp32 = package(model, target, work / f"{name}-{runtime}-fp32", data.images[:1], name=f"{name}-fp32")
        ref = outputs(runner_for(fp32.model_file, threads), test)
        recipe, smoke = INT8[runtime]
        rec = load_recipe(recipe, [f"input.image_size={size}", "budget.agreement=null", "budget.top1_drop=null", *smoke])
        t0 = time.time()
        built = compress_job(model, rec, splits, work / f"{name}-{runtime}-int8", cache=False, name=f"{name}-int8")
        seconds = round(time.time() - t0, 1)
        got = outputs(runner_for(Path(built.report["artifact"]["file"]), threads), test)
        sqnr = agreement(ref, got).sqnr_db  # int8 vs fp32 raw output: meaningful for random weights too
        score = lambda out: float(spec["metric"](out, labels, reference=ref, task=spec["task"]))  # noqa: E731
        a, b = _timed(fp32.path, threads, runs), _timed(Path(built.bundle_path), threads, runs)
        row[runtime] = {"metric_fp32": round(score(ref), 4), "metric_int8": round(score(got), 4),
                        "fp32": a, "int8": b, "size_ratio_int8_over_fp32": round(b["bytes"] / a["bytes"], 3),
                        "latency_ratio_int8_over_fp32": round(b["p50_ms"] / a["p50_ms"], 3),
                        "output_sqnr_db": round(float(sqnr), 2) if np.isfinite(sqnr) else None,
                        "compress_seconds": seconds}
    row["metric"] = {"tinyyolo": "mAP@0.5", "tinyseg": "mIoU", "ssdlite": "mAP@0.5 vs fp32's top-10 boxes",
                     "lraspp": "pixel agreement vs fp32"}[name]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tinyyolo,tinyseg,ssdlite,lraspp")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--size", type=int, default=64, help="input size of the shapes-trained models")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, args.threads))
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    doc = {"benchmark": "tasks", "cpu": cpu_facts(), "threads": args.threads, "runs": args.runs, "models": {}}
    with tempfile.TemporaryDirectory(prefix="edgekit-tasks-") as tmp:
        for name, spec in _models(names, args.size).items():
            doc["models"][name] = run_model(name, spec, args.threads, args.runs, Path(tmp))
    emit(doc)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
