"""Data the loaders refuse (one line naming the file and what to do) and the preprocessing they
apply, so a Splits holds exactly what the model is fed; check_input's match with recipe and model."""

from __future__ import annotations

import numpy as np
import pytest

from kit.data import load_data, load_digits, load_npz
from kit.errors import EdgeKitError
from kit.preprocess import Preprocess


def _refused(path, text, **kwargs) -> str:
    with pytest.raises(EdgeKitError) as e:
        load_data(str(path), **kwargs)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg and text in msg, msg
    return msg


def test_bad_values_are_refused_naming_the_file(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((20, 3, 12, 12)).astype(np.float32)
    x[3, 0, :2, :2] = np.nan
    x[5, 1, 0, 0] = np.inf
    np.savez(tmp_path / "nan.npz", x=x)
    msg = _refused(tmp_path / "nan.npz", "5 non-finite values (4 NaN, 1 Inf)", image_size=12)
    assert "nan_to_num" in msg
    np.savez(tmp_path / "big.npz", x=rng.random((20, 3, 12, 12)) * 1000)
    _refused(tmp_path / "big.npz", "values up to", image_size=12)
    normalised = (rng.random((20, 3, 12, 12)) - 0.45) / 0.22  # already normalised by the user
    np.savez(tmp_path / "normalised.npz", x=normalised)
    _refused(tmp_path / "normalised.npz", "looks normalised already", image_size=12, preprocess="imagenet")
    kept = load_data(str(tmp_path / "normalised.npz"), image_size=12)  # no preset: taken as the model's input
    assert kept.train.x.min() < -1.5 and kept.train.x.max() > 1.5  # not divided by 255
    np.savez(tmp_path / "grey.npz", x=rng.integers(0, 256, (20, 12, 12)).astype(np.uint8))
    _refused(tmp_path / "grey.npz", "1 channel(s) but the preprocess mean/std have 3", image_size=12, preprocess="imagenet")
    _refused(tmp_path / "grey.npz", "1 channel(s) but 3 are expected", image_size=12, channels=3)
    np.savez(tmp_path / "labels.npz", x=rng.random((20, 1, 8, 8)), y=np.arange(20) - 3)
    _refused(tmp_path / "labels.npz", "class indices")
    np.savez(tmp_path / "short.npz", x=rng.random((20, 1, 8, 8)), y=np.arange(10))
    _refused(tmp_path / "short.npz", "10 labels for 20 images")
    with pytest.raises(EdgeKitError, match="1 channel but 3 are expected"):
        load_data("digits", 16, channels=3)


def test_loaders_apply_the_preprocess(tmp_path):
    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, size=(30, 20, 28, 3), dtype=np.uint8)  # channels last, as photos come
    np.savez(tmp_path / "rgb.npz", x=hwc, y=np.arange(30) % 3)
    pre = Preprocess.from_spec({"preset": "imagenet", "resize": "shorter_crop"})
    s = load_npz(tmp_path / "rgb.npz", image_size=16, preprocess=pre)
    assert s.train.x.shape[1:] == (3, 16, 16) and s.preprocess == pre and s.num_classes == 3
    every = np.concatenate([s.train.x, s.calib.x, s.test.x])
    want = pre.apply(hwc, 16)
    # the splits are a permutation of exactly the preprocessed images
    assert sorted(map(bytes, every.round(4))) == sorted(map(bytes, want.round(4)))
    assert every.min() < -1.0  # normalised, not [0, 1]
    plain = load_npz(tmp_path / "rgb.npz", image_size=16)
    assert plain.preprocess is None and 0.0 <= plain.train.x.min() and plain.train.x.max() <= 1.0

    from PIL import Image

    root = tmp_path / "folder"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    (root / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(EdgeKitError, match="broken.png: cannot read as an image"):
        load_data(str(root), 16, preprocess="inception")
    (root / "a" / "broken.png").unlink()
    f = load_data(str(root), 16, preprocess="inception")
    assert f.train.x.shape[1:] == (3, 16, 16) and f.preprocess.preset == "inception"
    assert -1.0 <= f.train.x.min() < -0.5 and 0.5 < f.train.x.max() <= 1.0

    # digits: the default is unchanged (grey in [0, 1]); asked for, a preprocess applies to them too
    d = load_digits(16)
    assert d.preprocess is None and d.train.x.min() == 0.0 and d.train.x.max() == pytest.approx(1.0)
    dn = load_digits(16, preprocess={"mean": [0.5], "std": [0.25]})
    assert np.allclose(dn.train.x, (d.train.x - 0.5) / 0.25, atol=1e-5)


def test_check_input_matches_recipe_and_model():
    import torch

    from kit.pipeline.build import check_input
    from kit.recipes import load_recipe

    digits = load_digits(16)
    recipe = load_recipe("x86-64-int8", ["input.image_size=16"])
    check_input(recipe, digits, torch.nn.Conv2d(1, 4, 3))
    with pytest.raises(EdgeKitError) as e:
        check_input(recipe, digits, torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))
    assert "first convolution (0) takes 3 channel(s)" in str(e.value) and "digits16" in str(e.value)
    with pytest.raises(EdgeKitError, match="use --image-size 16"):
        check_input(load_recipe("x86-64-int8"), digits)
    wants = load_recipe("x86-64-int8", ["input.image_size=16", "input.preprocess.mean=[0.5]", "input.preprocess.std=[0.2]"])
    with pytest.raises(EdgeKitError, match="loaded with no preprocessing"):
        check_input(wants, digits)
    check_input(wants, load_digits(16, preprocess={"mean": [0.5], "std": [0.2]}))
