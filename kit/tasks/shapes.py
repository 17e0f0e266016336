"""A synthetic shapes data set: coloured rectangles (class 0) and discs (class 1) on noise, seeded.

`make_shapes` returns images (N,3,H,W float32 in [0,1]), per-image detection labels
({"boxes": (K,4) xyxy float32 pixels, "labels": (K,) int64}) and masks (N,H,W int64: 0 background,
1 + class for the object pixels). `write_shapes` saves the same as an image folder with a COCO-style
JSON, YOLO txt labels and mask PNGs, so the loaders in kit.tasks.data can be tested on real files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLASSES = ("rectangle", "disc")


@dataclass
class Shapes:
    images: np.ndarray  # (N, 3, H, W) float32 in [0, 1]
    targets: list  # per image {"boxes": (K, 4) float32 xyxy pixels, "labels": (K,) int64}
    masks: np.ndarray  # (N, H, W) int64, 0 = background, 1 + class

    def __len__(self) -> int:
        return len(self.images)


def _overlaps(box, boxes, gap: float = 2.0) -> bool:
    return any(not (box[2] + gap <= b[0] or b[2] + gap <= box[0] or box[3] + gap <= b[1] or b[3] + gap <= box[1])
               for b in boxes)


def make_shapes(n: int, size: int = 64, seed: int = 0, max_objects: int = 3, min_side: int | None = None,
                max_side: int | None = None) -> Shapes:
    """`n` images of `size` x `size` with 1..max_objects non-overlapping shapes each."""
    rng = np.random.default_rng(seed)
    lo, hi = min_side or max(6, size // 6), max_side or max(8, size * 7 // 16)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    images = np.empty((n, 3, size, size), np.float32)
    masks = np.zeros((n, size, size), np.int64)
    targets = []
    for i in range(n):
        img = rng.uniform(0.0, 0.45, (3, size, size)).astype(np.float32)
        boxes, labels = [], []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _try in range(20):
                w, h = rng.integers(lo, hi + 1, 2)
                cls = int(rng.integers(0, len(CLASSES)))
                if cls == 1:
                    h = w
                x0, y0 = rng.integers(0, size - w + 1), rng.integers(0, size - h + 1)
                box = [float(x0), float(y0), float(x0 + w), float(y0 + h)]
                if not _overlaps(box, boxes):
                    break
            else:
                continue
            if cls == 0:
                inside = (xx >= box[0]) & (xx < box[2]) & (yy >= box[1]) & (yy < box[3])
            else:
                r = w / 2.0
                inside = (xx - (box[0] + r)) ** 2 + (yy - (box[1] + r)) ** 2 <= r * r
            colour = rng.uniform(0.55, 1.0, 3).astype(np.float32) * rng.permutation([1.0, 1.0, 0.3]).astype(np.float32)
            img[:, inside] = colour[:, None] + rng.normal(0, 0.03, (3, int(inside.sum()))).astype(np.float32)
            masks[i][inside] = cls + 1
            boxes.append(box)
            labels.append(cls)
        images[i] = np.clip(img, 0.0, 1.0)
        targets.append({"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64)})
    return Shapes(images, targets, masks)


def write_shapes(shapes: Shapes, folder: str | Path) -> dict:
    """Save as folder/images/*.png, folder/annotations.json (COCO, xywh boxes, category ids 1..C),
    folder/labels/*.txt (YOLO: class cx cy w h, normalised), folder/masks/*.png (class index per
    pixel). Returns the paths written."""
    from PIL import Image

    folder = Path(folder)
    for sub in ("images", "labels", "masks"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [],
            "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]}
    _, _, h, w = shapes.images.shape
    for i, (img, tgt, mask) in enumerate(zip(shapes.images, shapes.targets, shapes.masks)):
        stem = f"{i:05d}"
        Image.fromarray((img.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(folder / "images" / f"{stem}.png")
        Image.fromarray(mask.astype(np.uint8)).save(folder / "masks" / f"{stem}.png")
        coco["images"].append({"id": i + 1, "file_name": f"{stem}.png", "width": w, "height": h})
        lines = []
        for box, label in zip(tgt["boxes"], tgt["labels"]):
            x0, y0, x1, y1 = (float(v) for v in box)
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1,
                                        "category_id": int(label) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                        "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
            lines.append(f"{int(label)} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} {(y1 - y0) / h:.6f}")
        (folder / "labels" / f"{stem}.txt").write_text("".join(line + "\n" for line in lines))
    (folder / "annotations.json").write_text(json.dumps(coco))
    return {"images": folder / "images", "coco": folder / "annotations.json", "yolo": folder / "labels",
            "masks": folder / "masks"}
