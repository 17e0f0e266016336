"""Task metrics, each `fn(outputs, labels, reference=None, task=None) -> float`, higher is better.

With labels they score the outputs against them; without (labels None) against the fp32 model's
own postprocessed outputs `reference` (pseudo-labels: its top-1, its masks, its boxes above
`pseudo_conf`). mIoU is torchmetrics' MeanIoU; mAP is torchmetrics' MeanAveragePrecision with the
pycocotools backend (no hand-written mAP). `task` (kit.tasks.spec.Task) supplies the postprocess
and its params (image_size, conf, iou, num_classes, pseudo_conf).
"""

from __future__ import annotations

import numpy as np

from kit.errors import EdgeKitError


def _targets(labels, reference, what: str):
    if labels is not None:
        return labels
    if reference is None:
        raise EdgeKitError(f"{what}: no labels and no reference outputs to compare with")
    return None


def top1(outputs, labels, reference=None, task=None) -> float:
    y = _targets(labels, reference, "top1")
    y = np.argmax(reference, 1) if y is None else np.asarray(y)
    return float(np.mean(np.argmax(outputs, 1) == y))


def top5(outputs, labels, reference=None, task=None) -> float:
    y = _targets(labels, reference, "top5")
    y = np.argmax(reference, 1) if y is None else np.asarray(y)
    k = min(5, outputs.shape[1])
    best = np.argpartition(-np.asarray(outputs), k - 1, axis=1)[:, :k]
    return float(np.mean((best == y[:, None]).any(1)))


def argmax_masks(outputs, **_) -> np.ndarray:
    """[N, C, H, W] logits -> (N, H, W) int64 class masks."""
    return np.argmax(np.asarray(outputs), 1).astype(np.int64)


def _masks(outputs, task) -> np.ndarray:
    return np.asarray(task.run_postprocess(outputs)) if task is not None else argmax_masks(outputs)


def miou(outputs, labels, reference=None, task=None) -> float:
    """Mean IoU over the classes present in prediction or target (torchmetrics MeanIoU)."""
    import torch
    from torchmetrics.segmentation import MeanIoU

    y = _targets(labels, reference, "miou")
    target = _masks(reference, task) if y is None else np.asarray(y, np.int64)
    pred = _masks(outputs, task)
    n = int((task.params.get("num_classes") if task is not None else None) or np.asarray(outputs).shape[1])
    metric = MeanIoU(num_classes=n, input_format="index", per_class=True)
    metric.update(torch.from_numpy(pred), torch.from_numpy(target))
    per_class = metric.compute().numpy()
    present = np.isin(np.arange(n), np.union1d(np.unique(pred), np.unique(target)))
    return float(per_class[present].mean()) if present.any() else 0.0


def pixel_agreement(outputs, labels, reference=None, task=None) -> float:
    """Share of pixels whose class equals the label's (or the fp32 model's)."""
    y = _targets(labels, reference, "pixel_agreement")
    target = _masks(reference, task) if y is None else np.asarray(y, np.int64)
    return float(np.mean(_masks(outputs, task) == target))


def detections(outputs, task, **override) -> list[dict]:
    if task is None:
        from kit.tasks.detect import postprocess

        return postprocess(outputs, **override)
    return task.run_postprocess(outputs, **override)


def _map(outputs, labels, reference, task, key: str) -> float:
    y = _targets(labels, reference, "mAP")
    if y is None:
        conf = (task.params.get("pseudo_conf") if task is not None else None) or 0.5
        y = detections(reference, task, conf=conf)
    return map_of(detections(outputs, task), y, key)


def map_of(preds: list[dict], targets, key: str = "map_50") -> float:
    """torchmetrics MeanAveragePrecision (pycocotools backend) of per-image detections against
    per-image targets; `key`: "map_50", "map", ... (0 when there is nothing to match)."""
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    tensor = lambda d, keys: {k: torch.as_tensor(np.asarray(d[k])) for k in keys}  # noqa: E731
    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy", backend="pycocotools")
    metric.update([tensor(p, ("boxes", "scores", "labels")) for p in preds],
                  [tensor({"boxes": np.asarray(t["boxes"], np.float32).reshape(-1, 4),
                           "labels": np.asarray(t["labels"], np.int64)}, ("boxes", "labels")) for t in targets])
    value = float(metric.compute()[key])
    return max(value, 0.0)  # torchmetrics says -1 when there is nothing to match: no box found is 0


def map50(outputs, labels, reference=None, task=None) -> float:
    """mAP at IoU 0.5 (COCO's AP50), 0..1."""
    return _map(outputs, labels, reference, task, "map_50")


def map50_95(outputs, labels, reference=None, task=None) -> float:
    """COCO mAP averaged over IoU 0.5:0.95, 0..1."""
    return _map(outputs, labels, reference, task, "map")
