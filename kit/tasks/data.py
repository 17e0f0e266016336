"""Loaders for task data: an image folder with a COCO-style JSON or YOLO txt labels (detection),
with mask PNGs (segmentation), or without labels (calibration and agreement only).

Layout (what kit.tasks.shapes.write_shapes writes): FOLDER/images/*.png|jpg, and FOLDER/annotations.json
(COCO: images[].file_name, annotations[].bbox xywh pixels, category_id), or FOLDER/labels/<stem>.txt
(YOLO: `class cx cy w h` normalised; a missing file is an image without objects), or
FOLDER/masks/<stem>.png (class index per pixel). Detection labels are per image
{"boxes": (K,4) xyxy float32 pixels, "labels": (K,) int64}, held in an object array so that
kit.splits.Dataset slices them like any labels; masks are (N,H,W) int64. A bad file is one line
naming it and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kit.errors import EdgeKitError
from kit.splits import Dataset, Splits

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")


def object_labels(targets: list) -> np.ndarray:
    """A list of per-image target dicts as a 1-D object array (sliceable like labels)."""
    out = np.empty(len(targets), dtype=object)
    for i, t in enumerate(targets):
        out[i] = {"boxes": np.asarray(t["boxes"], np.float32).reshape(-1, 4), "labels": np.asarray(t["labels"], np.int64)}
    return out


def _read(path: Path, mode: str, size: int | None, resample: str):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            w, h = im.size
            if size is not None and (w, h) != (size, size):
                im = im.resize((size, size), getattr(Image.Resampling, resample))
            return np.asarray(im, dtype=np.uint8), (w, h)
    except OSError as e:
        raise EdgeKitError(f"{path}: cannot read as an image ({e}); remove it or convert it to PNG/JPEG") from None


def _images_dir(folder: Path) -> Path:
    d = folder / "images" if (folder / "images").is_dir() else folder
    if not d.is_dir():
        raise EdgeKitError(f"{folder}: no such folder; give an image folder (FOLDER/images/*.png)")
    return d


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in _images_dir(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EdgeKitError(f"{_images_dir(folder)}: no images (.png/.jpg); put the images there")
    return files


def _stack(images: list[np.ndarray], files: list[Path]) -> np.ndarray:
    shape = images[0].shape
    for img, f in zip(images, files):
        if img.shape != shape:
            raise EdgeKitError(f"{f}: {img.shape[1]}x{img.shape[0]} pixels but {files[0].name} is {shape[1]}x{shape[0]}; "
                               "give an image size (--image-size) to resize them all")
    return (np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)


def load_unlabelled(folder: str | Path, image_size: int | None = None) -> np.ndarray:
    """(N,3,H,W) float32 in [0,1]."""
    files = _image_files(Path(folder))
    return _stack([_read(f, "RGB", image_size, "BILINEAR")[0] for f in files], files)


def load_coco(folder: str | Path, annotations: str | Path | None = None, image_size: int | None = None):
    """(images, targets) from FOLDER/images and a COCO JSON (default FOLDER/annotations.json);
    category ids are mapped to 0..C-1 in id order."""
    folder = Path(folder)
    ann_path = Path(annotations) if annotations else folder / "annotations.json"
    try:
        doc = json.loads(ann_path.read_text())
        cats = sorted(int(c["id"]) for c in doc["categories"])
        entries = [(int(im["id"]), str(im["file_name"])) for im in doc["images"]]
        anns = [(int(a["image_id"]), int(a["category_id"]), [float(v) for v in a["bbox"]]) for a in doc["annotations"]]
    except FileNotFoundError:
        raise EdgeKitError(f"{ann_path}: no such file; give the COCO annotations JSON") from None
    except (ValueError, KeyError, TypeError) as e:
        raise EdgeKitError(f"{ann_path}: not a COCO annotations file ({type(e).__name__}: {e}); it needs images[], "
                           "annotations[] with image_id/category_id/bbox [x,y,w,h] and categories[]") from None
    index = {c: i for i, c in enumerate(cats)}
    base = _images_dir(folder)
    images, targets, files = [], [], []
    for image_id, name in entries:
        path = base / name if (base / name).is_file() else ann_path.parent / name
        pixels, (w, h) = _read(path, "RGB", image_size, "BILINEAR")
        sx, sy = (1.0, 1.0) if image_size is None else (image_size / w, image_size / h)
        boxes, labels = [], []
        for img_id, cat, (x, y, bw, bh) in anns:
            if img_id != image_id:
                continue
            if cat not in index:
                raise EdgeKitError(f"{ann_path}: annotation on {name} has category_id {cat}, not in categories[]; fix it")
            boxes.append([x * sx, y * sy, (x + bw) * sx, (y + bh) * sy])
            labels.append(index[cat])
        images.append(pixels)
        files.append(path)
        targets.append({"boxes": boxes, "labels": labels})
    return _stack(images, files), object_labels(targets)


def load_yolo(folder: str | Path, image_size: int | None = None):
    """(images, targets) from FOLDER/images and FOLDER/labels/<stem>.txt (`class cx cy w h`, normalised)."""
    folder = Path(folder)
    files = _image_files(folder)
    images, targets = [], []
    for f in files:
        pixels, (w, h) = _read(f, "RGB", image_size, "BILINEAR")
        W, H = (w, h) if image_size is None else (image_size, image_size)
        txt = folder / "labels" / f"{f.stem}.txt"
        boxes, labels = [], []
        if txt.is_file():
            for n, line in enumerate(txt.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    cls, cx, cy, bw, bh = line.split()
                    cls, cx, cy, bw, bh = int(cls), float(cx), float(cy), float(bw), float(bh)
                except ValueError:
                    raise EdgeKitError(f"{txt}:{n}: expected `class cx cy w h` (normalised 0..1), got {line.strip()!r}; "
                                       "fix or remove the line") from None
                boxes.append([(cx - bw / 2) * W, (cy - bh / 2) * H, (cx + bw / 2) * W, (cy + bh / 2) * H])
                labels.append(cls)
        images.append(pixels)
        targets.append({"boxes": boxes, "labels": labels})
    return _stack(images, files), object_labels(targets)


def load_masks(folder: str | Path, image_size: int | None = None):
    """(images, masks) from FOLDER/images and FOLDER/masks/<stem>.png (class index per pixel)."""
    folder = Path(folder)
    files = _image_files(folder)
    images, masks = [], []
    for f in files:
        mask_file = folder / "masks" / f"{f.stem}.png"
        if not mask_file.is_file():
            raise EdgeKitError(f"{mask_file}: no mask for image {f.name}; add it (a PNG of class indices) or remove the image")
        pixels, size = _read(f, "RGB", image_size, "BILINEAR")
        mask, msize = _read(mask_file, "L", image_size, "NEAREST")
        if msize != size:
            raise EdgeKitError(f"{mask_file}: {msize[0]}x{msize[1]} pixels but its image is {size[0]}x{size[1]}; "
                               "give the mask the image's size")
        images.append(pixels)
        masks.append(mask)
    return _stack(images, files), np.stack(masks).astype(np.int64)


def task_splits(x: np.ndarray, y, name: str, *, num_classes: int = 0, preprocess=None, seed: int = 0,
                calib_fraction: float = 0.25, test_fraction: float = 0.5) -> Splits:
    """Train/calibration/test splits (shuffled with `seed`); the calibration split carries no labels."""
    if len(x) < 4:
        raise EdgeKitError(f"data set {name!r} has only {len(x)} images; give at least 4 to split calibration/test")
    if isinstance(y, list):
        y = object_labels(y)
    if preprocess is not None:
        x = preprocess.normalise(x)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], None if y is None else y[order]
    n_test, n_calib = max(1, int(len(x) * test_fraction)), max(1, int(len(x) * calib_fraction))
    n_train = len(x) - n_test - n_calib  # >= 1 for 4 or more images
    part = lambda a, b: None if y is None else y[a:b]  # noqa: E731
    train = Dataset(x[:n_train], part(0, n_train))
    calib = Dataset(x[n_train:n_train + n_calib], None)
    test = Dataset(x[n_train + n_calib:], part(n_train + n_calib, None))
    return Splits(train=train, calib=calib, test=test, num_classes=num_classes, name=name, preprocess=preprocess)


def load_task_data(kind: str, folder: str | Path, image_size: int | None = None, preprocess=None, seed: int = 0) -> Splits:
    """A task's data from a folder: COCO JSON or YOLO labels (detection), mask PNGs
    (segmentation), or images only (unlabelled: the metric then compares with the fp32 model)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgeKitError(f"--data {folder}: no such folder; give an image folder with labels (see kit.tasks.data)")
    name = folder.name
    if kind == "detection" and (folder / "annotations.json").is_file():
        x, y = load_coco(folder, image_size=image_size)
    elif kind == "detection" and (folder / "labels").is_dir():
        x, y = load_yolo(folder, image_size=image_size)
    elif kind == "segmentation" and (folder / "masks").is_dir():
        x, y = load_masks(folder, image_size=image_size)
    else:
        x, y = load_unlabelled(folder, image_size), None
    return task_splits(x, y, name, preprocess=preprocess, seed=seed)
