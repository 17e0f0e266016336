"""Natural photos for real pretrained models, offline: random crops and flips of the photos that
ship inside scikit-image and scikit-learn, split by photo so test crops show scenes calibration
never saw (or, for a fixed camera, disjoint crops of the same photos). No labels: the measure is
agreement with the original model.

Photos (all bundled in the wheels, nothing is fetched): calibration from scikit-image's astronaut,
coffee, the stereo motorcycle pair (one scene, so both on the same side) and scikit-learn's china;
test from scikit-image's chelsea (a tabby cat: ImageNet classes 281-285) and rocket, and
scikit-learn's flower.
"""

from __future__ import annotations

import numpy as np

from kit.splits import Dataset, Splits
from kit.errors import EdgeKitError

CALIB_PHOTOS = ("astronaut", "coffee", "motorcycle_left", "motorcycle_right", "china")
TEST_PHOTOS = ("chelsea", "rocket", "flower")
MIN_CROP = 0.4  # a crop's side is this share of the photo's shorter side, or more (up to all of it)


def photo(name: str) -> np.ndarray:
    """One bundled photo as H x W x 3 uint8 RGB."""
    try:
        if name in ("china", "flower"):
            from sklearn.datasets import load_sample_image

            return load_sample_image(f"{name}.jpg")
        import skimage.data

        if name in ("motorcycle_left", "motorcycle_right"):
            left, right, _ = skimage.data.stereo_motorcycle()
            return left if name == "motorcycle_left" else right
        return getattr(skimage.data, name)()
    except ImportError as e:
        raise EdgeKitError(f"photos need scikit-image and scikit-learn ({e.name} missing); "
                           "run `pip install -e '.[real]'`") from None
    except AttributeError:
        raise EdgeKitError(f"photo {name!r} unknown; choose from {', '.join(CALIB_PHOTOS + TEST_PHOTOS)}") from None


def crops(names: tuple[str, ...], n: int, image_size: int, rng: np.random.Generator, prep) -> np.ndarray:
    """`n` random square crops (side MIN_CROP..1 of the shorter side), half of them mirrored, taken
    from the photos in turn, each resized to image_size by `prep`'s resize policy (a
    kit.preprocess.Preprocess): float32 N x 3 x S x S in [0, 1]."""
    images = [photo(name) for name in names]
    out = np.empty((n, 3, image_size, image_size), dtype=np.float32)
    for i in range(n):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        side = int(round(min(h, w) * rng.uniform(MIN_CROP, 1.0)))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = img[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out[i] = prep.resize_images(np.ascontiguousarray(crop), image_size)[0]
    return np.clip(out, 0.0, 1.0)


def photo_sets(same_photos: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train photos, test photos): split by photo, or for a fixed camera all photos on both sides."""
    return (CALIB_PHOTOS + TEST_PHOTOS,) * 2 if same_photos else (CALIB_PHOTOS, TEST_PHOTOS)


def load_photos(image_size: int = 224, n_calib: int = 64, n_test: int = 200, seed: int = 0,
                preprocess="imagenet", *, same_photos: bool = False, n_train: int | None = None) -> Splits:
    """Unlabelled Splits: train crops (calibration: their first `n_calib`) and `n_test` test crops,
    normalised with `preprocess` (kit.preprocess.Preprocess.from_spec: a preset name, a dict, a
    Preprocess or None). By default split by photo: train from CALIB_PHOTOS, test from TEST_PHOTOS,
    so test crops show scenes calibration never saw (Splits named "photos"). `same_photos`: a fixed
    camera, train and test disjoint sets of random crops of the same photos, all of them
    ("photos-same-photos"). `n_train` defaults to `n_calib`. The same seed gives the same crops."""
    from kit.preprocess import Preprocess

    n_train = n_calib if n_train is None else n_train
    if image_size < 8 or n_calib < 1 or n_test < 1 or n_train < n_calib:
        raise EdgeKitError(f"photos: image_size={image_size}, n_calib={n_calib}, n_test={n_test}, n_train={n_train}; "
                           "give image_size >= 8, at least one calibration and one test crop, and n_train >= n_calib")
    prep = Preprocess.from_spec(preprocess)
    train_photos, test_photos = photo_sets(same_photos)
    # One generator per split: the test crops do not change with n_calib / n_train, and the first
    # n_calib train crops are the ones a shorter draw gives.
    train = prep.normalise(crops(train_photos, n_train, image_size, np.random.default_rng([seed, 0]), prep))
    test = Dataset(prep.normalise(crops(test_photos, n_test, image_size, np.random.default_rng([seed, 1]), prep)), None)
    calib = Dataset(train[:n_calib], None)
    return Splits(train=calib if n_train == n_calib else Dataset(train, None), calib=calib, test=test, num_classes=0,
                  name="photos-same-photos" if same_photos else "photos", preprocess=prep)
