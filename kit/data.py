"""Data sets as plain numpy arrays: the bundled digits set, an image folder, or an .npz file.

Everything downstream sees `Splits` (float32 NCHW images in [0, 1], int64 labels), so the
compression, evaluation and packaging stages never care where the data came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.errors import EdgeKitError


@dataclass
class Dataset:
    x: np.ndarray  # float32, N x C x H x W
    y: np.ndarray | None  # int64 labels, or None for unlabelled data

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int):
        for i in range(0, len(self.x), batch_size):
            yield self.x[i : i + batch_size], (None if self.y is None else self.y[i : i + batch_size])


@dataclass
class Splits:
    train: Dataset
    calib: Dataset
    test: Dataset
    num_classes: int
    name: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one batch-of-one input, e.g. (1, 1, 32, 32)."""
        return (1, *self.train.x.shape[1:])


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(x)
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False).numpy()


def _split(x: np.ndarray, y: np.ndarray | None, num_classes: int, name: str, seed: int,
           calib_fraction: float = 0.12, test_fraction: float = 0.25) -> Splits:
    if len(x) < 10:
        raise EdgeKitError(f"data set {name!r} has only {len(x)} samples; give at least 10 to split train/calibration/test")
    order = np.random.default_rng(seed).permutation(len(x))
    x = x[order]
    y = None if y is None else y[order]
    n_test = max(1, int(len(x) * test_fraction))
    n_calib = max(1, int(len(x) * calib_fraction))
    cut = (slice(0, len(x) - n_test - n_calib), slice(len(x) - n_test - n_calib, len(x) - n_test), slice(len(x) - n_test, None))
    parts = [Dataset(x[s], None if y is None else y[s]) for s in cut]
    return Splits(train=parts[0], calib=parts[1], test=parts[2], num_classes=num_classes, name=name)


def load_digits(image_size: int = 32, seed: int = 0) -> Splits:
    """scikit-learn's bundled 8x8 digits (1797 real scans), upsampled to image_size x image_size."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    if image_size != 8:
        x = _resize(x, image_size)
    return _split(x.astype(np.float32), d.target.astype(np.int64), 10, f"digits{image_size}", seed)


def load_npz(path: str | Path, image_size: int | None = None, seed: int = 0) -> Splits:
    """An .npz with `x` (N x C x H x W or N x H x W, any numeric dtype) and optional `y` labels."""
    path = Path(path)
    try:
        with np.load(path) as f:
            if "x" not in f:
                raise EdgeKitError(f"{path}: no array named 'x' in the .npz; save images as x=... (and labels as y=...)")
            x = f["x"].astype(np.float32)
            y = f["y"].astype(np.int64) if "y" in f else None
    except EdgeKitError:
        raise
    except Exception as e:  # numpy raises several types for non-npz files
        raise EdgeKitError(f"{path}: cannot read as .npz ({type(e).__name__}); give a file written by numpy.savez") from e
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise EdgeKitError(f"{path}: 'x' has shape {x.shape}; expected N x C x H x W or N x H x W")
    if x.max() > 1.5:
        x = x / 255.0
    if image_size:
        x = _resize(x, image_size)
    num_classes = int(y.max()) + 1 if y is not None else 0
    return _split(x, y, num_classes, path.stem, seed)


def load_image_folder(path: str | Path, image_size: int = 32, seed: int = 0, grayscale: bool = False) -> Splits:
    """A folder of class sub-folders of images (torchvision ImageFolder layout)."""
    from torchvision.datasets import ImageFolder
    from torchvision import transforms

    path = Path(path)
    tf = [transforms.Resize((image_size, image_size))]
    if grayscale:
        tf.append(transforms.Grayscale())
    tf.append(transforms.ToTensor())
    try:
        ds = ImageFolder(str(path), transform=transforms.Compose(tf))
    except (FileNotFoundError, RuntimeError) as e:
        raise EdgeKitError(f"{path}: not an image folder with one sub-folder per class ({e})") from e
    xs = np.stack([ds[i][0].numpy() for i in range(len(ds))]).astype(np.float32)
    ys = np.array(ds.targets, dtype=np.int64)
    return _split(xs, ys, len(ds.classes), path.name, seed)


def load_data(spec: str = "digits", image_size: int = 32, seed: int = 0) -> Splits:
    """`digits`, a path to an .npz file, or a path to an image folder."""
    if spec == "digits":
        return load_digits(image_size, seed)
    p = Path(spec)
    if not p.exists():
        raise EdgeKitError(f"data {spec!r}: no such file or folder; use 'digits', an .npz file or an image folder")
    if p.is_dir():
        return load_image_folder(p, image_size, seed)
    return load_npz(p, image_size, seed)
