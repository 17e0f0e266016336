"""Natural photos for real pretrained models, offline: random crops and flips of the photos that
ship inside scikit-image and scikit-learn, split by photo so test crops show scenes calibration
never saw. No labels: the measure is agreement with the original model.

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


def load_photos(image_size: int = 224, n_calib: int = 64, n_test: int = 200, seed: int = 0,
                preprocess="imagenet") -> Splits:
    """Unlabelled Splits named "photos": calibration crops (also the train split) from CALIB_PHOTOS,
    test crops from TEST_PHOTOS, normalised with `preprocess` (kit.preprocess.Preprocess.from_spec:
    a preset name, a dict, a Preprocess or None). The same seed gives the same crops."""
    from kit.preprocess import Preprocess

    if image_size < 8 or n_calib < 1 or n_test < 1:
        raise EdgeKitError(f"photos: image_size={image_size}, n_calib={n_calib}, n_test={n_test}; "
                           "give image_size >= 8 and at least one calibration and one test crop")
    prep = Preprocess.from_spec(preprocess)
    # One generator per split: the test crops do not change with n_calib.
    calib = Dataset(prep.normalise(crops(CALIB_PHOTOS, n_calib, image_size, np.random.default_rng([seed, 0]), prep)), None)
    test = Dataset(prep.normalise(crops(TEST_PHOTOS, n_test, image_size, np.random.default_rng([seed, 1]), prep)), None)
    return Splits(train=calib, calib=calib, test=test, num_classes=0, name="photos", preprocess=prep)
