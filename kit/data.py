"""Data sets as plain numpy arrays: the bundled digits set, an image folder, or an .npz file.

Everything downstream sees `Splits` (float32 NCHW images, int64 labels), so the compression,
evaluation and packaging stages never care where the data came from. Each loader takes a
`preprocess` (kit.preprocess.Preprocess, a preset name, a dict of its fields, or None) and applies
it, resize policy then normalisation, so a Splits holds exactly what the model is fed; with None
the images stay RGB/grey in [0, 1] (the digits' default). `Splits.preprocess` records what was applied.

File data is checked first, with one line naming the file and what to do: NaN/Inf values, pixel
values out of range (above 255, or negative, i.e. already normalised, when a normalisation is
also asked for), and channels that do not match the preprocess mean/std or `channels=`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.errors import EdgeKitError
from kit.preprocess import Preprocess
from kit.splits import Dataset, Splits  # noqa: F401  (re-exported: kit.data is where users look)


def _spec(preprocess) -> Preprocess | None:
    return None if preprocess is None else Preprocess.from_spec(preprocess)


def check_images(x: np.ndarray, source: str, preprocess: Preprocess | None = None, channels: int | None = None) -> None:
    """Refuse images the model cannot be calibrated or judged on, with one line naming `source`."""
    bad = int(x.size - np.count_nonzero(np.isfinite(x))) if np.issubdtype(x.dtype, np.floating) else 0
    if bad:
        nan = int(np.count_nonzero(np.isnan(x)))
        raise EdgeKitError(f"{source}: x has {bad} non-finite values ({nan} NaN, {bad - nan} Inf) of {x.size}; "
                           f"replace or drop those samples (e.g. numpy.nan_to_num) and save the file again")
    if x.size == 0:
        raise EdgeKitError(f"{source}: x holds no images; save at least 10")
    lo, hi = float(x.min()), float(x.max())
    if hi > 255.0:
        raise EdgeKitError(f"{source}: x has values up to {hi:g}; save pixels as 0..255 or 0..1")
    if lo < 0 and preprocess is not None and preprocess.normalises:
        raise EdgeKitError(f"{source}: x has negative values (min {lo:g}): it looks normalised already, and a "
                           f"normalisation is also asked for; save raw pixels (0..255 or 0..1) or use --preprocess none")
    have = x.shape[1]
    if preprocess is not None and preprocess.mean is not None and len(preprocess.mean) != have:
        raise EdgeKitError(f"{source}: the images have {have} channel(s) but the preprocess mean/std have "
                           f"{len(preprocess.mean)}; give {have} value(s) to --mean/--std or another --preprocess")
    if channels is not None and channels != have:
        raise EdgeKitError(f"{source}: the images have {have} channel(s) but {channels} are expected; "
                           f"save {channels}-channel images or set input.channels={have}")


def prepare(x: np.ndarray, image_size: int | None = None, preprocess=None, *, source: str = "data",
            channels: int | None = None) -> np.ndarray:
    """Check images and turn them into what the model is fed: float32 NCHW at image_size x image_size
    (None: as they are), resized by the preprocess policy and normalised by it.

    `x`: N x C x H x W, N x H x W (grey) or N x H x W x C (channels last, C in 1/3/4), any numeric
    dtype; 0..255 values (uint8, or any array whose max is above 1.5 and min >= 0) are scaled to
    [0, 1]; negative values are taken as already normalised and kept as they are.
    """
    pre = _spec(preprocess)
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise EdgeKitError(f"{source}: 'x' has shape {list(x.shape)}; expected N x C x H x W or N x H x W")
    if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)  # channels last -> NCHW
    check_images(x, source, pre, channels)
    scaled = x.dtype == np.uint8 or (float(x.max()) > 1.5 and float(x.min()) >= 0)
    x = x.astype(np.float32)
    if scaled:
        x = x / 255.0
    x = (pre or Preprocess()).resize_images(x, image_size)
    return x if pre is None else pre.normalise(x)


def _split(x: np.ndarray, y: np.ndarray | None, num_classes: int, name: str, seed: int,
           calib_fraction: float = 0.12, test_fraction: float = 0.25, preprocess: Preprocess | None = None) -> Splits:
    if len(x) < 10:
        raise EdgeKitError(f"data set {name!r} has only {len(x)} samples; give at least 10 to split train/calibration/test")
    order = np.random.default_rng(seed).permutation(len(x))
    x = x[order]
    y = None if y is None else y[order]
    n_test = max(1, int(len(x) * test_fraction))
    n_calib = max(1, int(len(x) * calib_fraction))
    cut = (slice(0, len(x) - n_test - n_calib), slice(len(x) - n_test - n_calib, len(x) - n_test), slice(len(x) - n_test, None))
    parts = [Dataset(x[s], None if y is None else y[s]) for s in cut]
    return Splits(train=parts[0], calib=parts[1], test=parts[2], num_classes=num_classes, name=name,
                  preprocess=preprocess)


def load_digits(image_size: int = 32, seed: int = 0, preprocess=None) -> Splits:
    """scikit-learn's bundled 8x8 digits (1797 real scans), upsampled to image_size x image_size;
    grey in [0, 1] unless `preprocess` says otherwise."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    pre = _spec(preprocess)
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    x = prepare(x, image_size if image_size != 8 else None, pre, source="digits")
    return _split(x.astype(np.float32), d.target.astype(np.int64), 10, f"digits{image_size}", seed, preprocess=pre)


def load_npz(path: str | Path, image_size: int | None = None, seed: int = 0, preprocess=None,
             channels: int | None = None, input_names: list[str] | None = None) -> Splits:
    """An .npz with `x` (N x C x H x W, N x H x W or N x H x W x C, any numeric dtype) and optional `y` labels.

    Several inputs: when the .npz holds more than one array besides `y`, every such array is one
    model input (named like forward()'s arguments, e.g. `x`, `mask`) and the Splits hold a tuple of
    arrays (kit.io); their order is `input_names` (the model's forward() signature) when given,
    else the .npz's own order. Such arrays are fed as stored (floats as float32): no image
    resizing or normalisation is applied to them."""
    path = Path(path)
    try:
        with np.load(path) as f:
            if len([k for k in f.files if k != "y"]) > 1:
                return _load_npz_inputs(path, {k: f[k] for k in f.files}, seed, input_names)
            if "x" not in f:
                raise EdgeKitError(f"{path}: no array named 'x' in the .npz; save images as x=... (and labels as y=...)")
            x = f["x"]
            y = f["y"] if "y" in f else None
    except EdgeKitError:
        raise
    except Exception as e:  # numpy raises several types for non-npz files
        raise EdgeKitError(f"{path}: cannot read as .npz ({type(e).__name__}); give a file written by numpy.savez") from e
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise EdgeKitError(f"{path}: 'x' holds {x.dtype} values; save real numbers (uint8 pixels or floats)")
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if len(y) != len(x):
            raise EdgeKitError(f"{path}: 'y' has {len(y)} labels for {len(x)} images; save one label per image")
        if not np.issubdtype(y.dtype, np.number) or (np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all()) \
                or (y < 0).any() or (y != np.round(y)).any():
            raise EdgeKitError(f"{path}: 'y' must hold class indices 0, 1, 2, ... (whole numbers >= 0)")
        y = y.astype(np.int64)
    pre = _spec(preprocess)
    x = prepare(x, image_size, pre, source=str(path), channels=channels)
    num_classes = int(y.max()) + 1 if y is not None else 0
    return _split(x, y, num_classes, path.stem, seed, preprocess=pre)


def _load_npz_inputs(path: Path, arrays: dict, seed: int, input_names: list[str] | None) -> Splits:
    """An .npz of several named inputs (see load_npz): one Splits with a tuple of arrays."""
    y = arrays.pop("y", None)
    names = list(arrays)
    if input_names:
        missing = [n for n in input_names if n not in arrays]
        if missing:
            raise EdgeKitError(f"{path}: no array named {missing[0]!r} for the model's input of that name "
                               f"(arrays: {', '.join(names)}); save one array per forward() argument")
        names = list(input_names)
    xs = []
    for n in names:
        a = np.asarray(arrays[n])
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise EdgeKitError(f"{path}: '{n}' holds {a.dtype} values; save real numbers")
        xs.append(a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a)
    n0 = len(xs[0])
    bad = [(n, len(a)) for n, a in zip(names, xs) if len(a) != n0]
    if bad:
        raise EdgeKitError(f"{path}: '{bad[0][0]}' has {bad[0][1]} samples but '{names[0]}' has {n0}; "
                           "every input array needs the same number of samples")
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if len(y) != n0 or not np.issubdtype(y.dtype, np.integer) or (y < 0).any():
            raise EdgeKitError(f"{path}: 'y' must hold one class index (0, 1, 2, ...) per sample ({n0})")
        y = y.astype(np.int64)
    if n0 < 10:
        raise EdgeKitError(f"data set {path.stem!r} has only {n0} samples; give at least 10 to split train/calibration/test")
    order = np.random.default_rng(seed).permutation(n0)
    xs, y = [a[order] for a in xs], None if y is None else y[order]
    n_test, n_calib = max(1, int(n0 * 0.25)), max(1, int(n0 * 0.12))
    cut = (slice(0, n0 - n_test - n_calib), slice(n0 - n_test - n_calib, n0 - n_test), slice(n0 - n_test, None))
    parts = [Dataset(tuple(a[c] for a in xs), None if y is None else y[c]) for c in cut]
    return Splits(train=parts[0], calib=parts[1], test=parts[2], num_classes=int(y.max()) + 1 if y is not None else 0,
                  name=path.stem)


def load_image_folder(path: str | Path, image_size: int = 32, seed: int = 0, grayscale: bool = False,
                      preprocess=None, channels: int | None = None) -> Splits:
    """A folder of class sub-folders of images (torchvision ImageFolder layout), each image resized
    by the preprocess policy (default: plain resize) and normalised by it."""
    from torchvision.datasets import ImageFolder

    path = Path(path)
    mode = "L" if grayscale else "RGB"
    try:
        ds = ImageFolder(str(path), loader=lambda f: _read_image(f, mode))
    except (FileNotFoundError, RuntimeError) as e:
        raise EdgeKitError(f"{path}: not an image folder with one sub-folder per class ({e})") from e
    pre = _spec(preprocess)
    policy = pre or Preprocess()
    xs = np.concatenate([policy.resize_images(ds[i][0], image_size) for i in range(len(ds))]).astype(np.float32)
    check_images(xs, str(path), pre, channels)
    if pre is not None:
        xs = pre.normalise(xs)
    ys = np.array(ds.targets, dtype=np.int64)
    return _split(xs, ys, len(ds.classes), path.name, seed, preprocess=pre)


def _read_image(file: str, mode: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(file) as im:
            a = np.asarray(im.convert(mode), dtype=np.uint8)
    except OSError as e:
        raise EdgeKitError(f"{file}: cannot read as an image ({e}); remove it or convert it to PNG/JPEG") from None
    return a[:, :, None] if a.ndim == 2 else a


def load_data(spec: str = "digits", image_size: int = 32, seed: int = 0, preprocess=None,
              channels: int | None = None) -> Splits:
    """`digits`, a path to an .npz file, or a path to an image folder, resized to image_size and
    preprocessed by `preprocess` (a Preprocess, preset name, dict of its fields, or None)."""
    if spec == "photos":  # crops of the photos scikit-image and scikit-learn ship (unlabelled)
        from kit.photos import load_photos

        return load_photos(image_size or 224, seed=seed, preprocess="imagenet" if preprocess is None else preprocess)
    if spec == "digits":
        splits = load_digits(image_size, seed, preprocess)
        if channels is not None and channels != 1:
            raise EdgeKitError(f"data 'digits' has 1 channel but {channels} are expected; use an RGB data set or input.channels=1")
        return splits
    p = Path(spec)
    if not p.exists():
        raise EdgeKitError(f"data {spec!r}: no such file or folder; use 'digits', 'photos', an .npz file or an image folder")
    if p.is_dir():
        return load_image_folder(p, image_size, seed, preprocess=preprocess, channels=channels)
    return load_npz(p, image_size, seed, preprocess=preprocess, channels=channels)
