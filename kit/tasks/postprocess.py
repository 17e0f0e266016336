"""Detection postprocessing (decode + NMS) in plain numpy.

Written by hand in numpy, not torchvision.ops.nms, on purpose: the device agent (device_agents/)
has numpy and one runtime but no torch, and this step must run the same on the host (the kit's
metrics) and on the device. Nothing here imports torch or kit.

Detections are per image {"boxes": (K,4) float32 xyxy pixels, "scores": (K,) float32,
"labels": (K,) int64}.
"""

from __future__ import annotations

import numpy as np


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices of the boxes kept by greedy non-maximum suppression, highest score first."""
    order = np.argsort(-scores, kind="stable")
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
        inter = w * h
        overlap = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float) -> np.ndarray:
    """NMS per class (boxes of different classes never suppress each other)."""
    if boxes.size == 0:
        return np.zeros(0, np.int64)
    offset = (labels.astype(np.float64) * (float(boxes.max()) + 1.0))[:, None]
    return nms(boxes + offset, scores, iou)


def select(boxes: np.ndarray, class_scores: np.ndarray, conf: float, iou: float, max_det: int) -> dict:
    """One image: best class per candidate, a score threshold, per-class NMS, the top `max_det`."""
    labels = np.argmax(class_scores, 1)
    scores = class_scores[np.arange(len(labels)), labels]
    keep = scores >= conf
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    kept = batched_nms(boxes, scores, labels, iou)[:max_det]
    return {"boxes": boxes[kept].astype(np.float32).reshape(-1, 4), "scores": scores[kept].astype(np.float32),
            "labels": labels[kept].astype(np.int64)}


def yolo(outputs: np.ndarray, image_size: float = 1.0, conf: float = 0.05, iou: float = 0.5,
         max_det: int = 100) -> list[dict]:
    """YOLO-export layout [N, 4+C, A]: rows 0..3 the boxes xyxy (normalised to [0,1] by the
    kit's TinyYolo; pass image_size to get pixels), then C class scores in [0,1] per anchor."""
    out = np.asarray(outputs, np.float32)
    if out.ndim != 3 or out.shape[1] < 5:
        raise ValueError(f"expected detector outputs [N, 4+C, A], got shape {out.shape}")
    return [select(o[:4].T * float(image_size), o[4:].T, conf, iou, max_det) for o in out]


def ssd(outputs: np.ndarray, anchors: np.ndarray, conf: float = 0.05, iou: float = 0.5, max_det: int = 100,
        weights=(10.0, 10.0, 5.0, 5.0)) -> list[dict]:
    """SSD raw-head layout [N, A, 4+C]: box deltas (dx, dy, dw, dh) against `anchors` (A,4 xyxy
    pixels) with torchvision's BoxCoder weights, then C class logits (class 0 = background). The
    labels returned are the class index minus one (background dropped)."""
    out = np.asarray(outputs, np.float32)
    anchors = np.asarray(anchors, np.float32)
    if out.ndim != 3 or out.shape[1] != len(anchors):
        raise ValueError(f"expected SSD outputs [N, {len(anchors)}, 4+C], got shape {out.shape}")
    results = []
    for o in out:
        boxes = ssd_decode(o[:, :4], anchors, weights)
        logits = o[:, 4:] - o[:, 4:].max(1, keepdims=True)
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        results.append(select(boxes, probs[:, 1:], conf, iou, max_det))
    return results


def ssd_decode(deltas: np.ndarray, anchors: np.ndarray, weights=(10.0, 10.0, 5.0, 5.0)) -> np.ndarray:
    """(A,4) box deltas against (A,4) xyxy anchors -> (A,4) xyxy boxes (torchvision BoxCoder.decode_single)."""
    anchors = np.asarray(anchors, np.float32)
    wa, ha = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cxa, cya = anchors[:, 0] + 0.5 * wa, anchors[:, 1] + 0.5 * ha
    d = np.asarray(deltas, np.float32) / np.asarray(weights, np.float32)
    dw, dh = np.minimum(d[:, 2], np.log(1000.0 / 16)), np.minimum(d[:, 3], np.log(1000.0 / 16))
    cx, cy, w, h = d[:, 0] * wa + cxa, d[:, 1] * ha + cya, np.exp(dw) * wa, np.exp(dh) * ha
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], 1)
