"""The preprocessing contract (kit.preprocess): presets, resize policies against torchvision's own
transforms, who decides (CLI > recipe > torchvision default), the recipe field and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kit.errors import EdgeKitError
from kit.preprocess import PRESETS, Preprocess, cli_spec, describe, resolve


def test_shorter_crop_is_torchvisions_eval_transform_and_resize_is_plain():
    from torchvision.transforms import v2

    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 300, 400), dtype=np.float32)
    pre = Preprocess.from_spec({"preset": "imagenet", "resize": "shorter_crop"})
    want = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)])(torch.from_numpy(x)).numpy()
    got = pre.resize_images(x, 224)
    assert got.shape == (2, 3, 224, 224) and np.abs(got - want).max() < 1e-6
    plain = Preprocess().resize_images(x, 224)
    assert plain.shape == (2, 3, 224, 224)
    assert np.abs(plain - v2.Resize((224, 224), antialias=True)(torch.from_numpy(x)).numpy()).max() < 1e-6
    assert np.abs(plain - got).max() > 0.05  # the two policies really differ (aspect ratio kept vs squashed)

    # HWC uint8 (a photo) goes the same way as its float NCHW twin; out comes NCHW float in [0, 1].
    photo = rng.integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    as_float = photo.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    assert np.abs(pre.resize_images(photo, 224) - pre.resize_images(as_float, 224)).max() < 1e-6
    batch = pre.resize_images(np.stack([photo, photo]), 64)
    assert batch.shape == (2, 3, 64, 64) and 0.0 <= batch.min() and batch.max() <= 1.0
    with pytest.raises(EdgeKitError, match="HWC or NHWC"):
        pre.resize_images(photo[:, :, 0], 32)


def test_apply_normalises_after_resizing():
    mean = np.asarray(PRESETS["imagenet"]["mean"], dtype=np.float32)
    x = np.broadcast_to(mean[None, :, None, None], (1, 3, 40, 50)).copy()
    out = Preprocess.from_spec("imagenet").apply(x, 32)
    assert out.shape == (1, 3, 32, 32) and np.abs(out).max() < 1e-5
    inception = Preprocess.from_spec("inception").apply(np.ones((1, 3, 8, 8), np.float32))
    assert np.allclose(inception, 1.0)  # [0, 1] -> [-1, 1]
    bgr = Preprocess(channel_order="bgr").apply(np.arange(3, dtype=np.float32).reshape(1, 3, 1, 1))
    assert bgr.ravel().tolist() == [2.0, 1.0, 0.0]
    assert Preprocess().apply(x).tolist() == x.tolist()  # none: untouched


def test_cli_wins_over_recipe_and_torchvision_defaults_to_imagenet():
    pre, source = resolve(None, None, "torchvision:mobilenet_v2")
    assert pre.preset == "imagenet" and "default for torchvision" in source
    assert resolve(None, None, "kit.models:TeacherCNN")[0] == Preprocess()
    assert resolve(cli_spec("none"), None, "torchvision:resnet18")[0].mean is None  # said: none
    # recipe says inception + shorter_crop; the CLI's preset replaces the normalisation, keeps the resize
    recipe = {"preset": "inception", "resize": "shorter_crop", "crop_fraction": 0.9}
    pre, source = resolve(cli_spec("imagenet"), recipe, "torchvision:resnet18")
    assert pre.preset == "imagenet" and pre.resize == "shorter_crop" and pre.crop_fraction == 0.9
    assert "command line" in source
    pre, _ = resolve(cli_spec(mean="0.1,0.2,0.3", std="1,1,1"), recipe)
    assert pre.mean == (0.1, 0.2, 0.3) and pre.preset is None and pre.resize == "shorter_crop"
    pre, source = resolve(cli_spec(resize="resize"), recipe, "torchvision:resnet18")
    assert pre.preset == "inception" and pre.resize == "resize"
    assert resolve(None, "inception", "torchvision:resnet18")[1] == "the recipe's input.preprocess"
    for kwargs, text in [({"preset": "imagenett"}, "--preprocess 'imagenett'"), ({"mean": "0.5"}, "--mean and --std"),
                         ({"mean": "a,b", "std": "1,1"}, "--mean 'a,b'"), ({"resize": "crop"}, "--resize 'crop'"),
                         ({"mean": "0,0", "std": "1,0"}, "every value must be > 0"),
                         ({"crop_fraction": 1.5}, "crop_fraction")]:
        with pytest.raises(EdgeKitError) as e:
            cli_spec(**kwargs)
        assert text in str(e.value) and "\n" not in str(e.value)


def test_manifest_fields_and_description():
    pre = Preprocess.from_spec({"preset": "imagenet", "resize": "shorter_crop"})
    doc = pre.manifest((1, 3, 224, 224), "photos")
    assert doc["layout"] == "NCHW" and doc["dtype"] == "float32" and doc["image_size"] == 224 and doc["data"] == "photos"
    assert {k: doc[k] for k in pre.to_dict()} == pre.to_dict()
    assert Preprocess.from_spec({k: v for k, v in doc.items() if k in pre.to_dict()}) == pre  # round trip
    text = describe(doc)
    assert "shorter_crop 0.875" in text and "0.485" in text and "(imagenet)" in text and "3x224x224" in text
    assert "not recorded" in describe({"layout": "NCHW", "dtype": "float32"}) and describe(None) == "not recorded"


def test_recipe_input_preprocess_field(tmp_path):
    from kit.recipes import load_recipe

    ok = tmp_path / "ok.yaml"
    ok.write_text("base: x86-64-int8-ort\ninput:\n  image_size: 64\n  preprocess: imagenet\n")
    r = load_recipe(ok)
    assert r.input.preprocessing() == Preprocess.from_spec("imagenet")
    assert load_recipe("x86-64-int8").input.preprocessing() is None  # shipped recipes say nothing
    mapping = tmp_path / "map.yaml"
    mapping.write_text("base: x86-64-int8\ninput: {preprocess: {preset: inception, resize: shorter_crop, crop_fraction: 0.9}}\n")
    p = load_recipe(mapping).input.preprocessing()
    assert (p.mean, p.resize, p.crop_fraction) == ((0.5, 0.5, 0.5), "shorter_crop", 0.9)
    assert load_recipe("x86-64-int8", ["input.preprocess=inception"]).input.preprocessing().preset == "inception"
    kept = load_recipe(ok).with_preprocess(Preprocess.from_spec("none"))
    assert kept.input.preprocessing() == Preprocess.from_spec("none") and kept.steps == r.steps

    cases = {
        "bad-preset": ("input:\n  preprocess: imagenett\n", [":6:", "field 'input.preprocess.preset'", "'imagenet'"]),
        "bad-resize": ("input:\n  preprocess:\n    preset: imagenet\n    resize: crop\n",
                       [":8:", "field 'input.preprocess.resize'", "'shorter_crop'"]),
        "mean-std": ("input:\n  preprocess:\n    mean: [0.5, 0.5]\n    std: [0.5]\n",
                     [":6:", "field 'input.preprocess'", "mean has 2 values but std has 1"]),
        "unknown": ("input:\n  preprocess: {means: [0.5]}\n", [":6:", "unknown key 'input.preprocess.means'", "preset, mean, std"]),
    }
    for name, (body, expected) in cases.items():
        f = tmp_path / f"{name}.yaml"
        f.write_text("name: t\ndevice: x86-64\nruntime: executorch\n# preprocessing\n" + body)
        with pytest.raises(EdgeKitError) as e:
            load_recipe(f)
        msg = str(e.value)
        assert msg.startswith(str(f)) and "\n" not in msg, msg
        for text in expected:
            assert text in msg, (name, msg)


def test_pretrained_models_default_to_what_their_weights_were_trained_on():
    from kit.preprocess import resolve

    lite, why = resolve(None, None, "pretrained:efficientnet-lite1")
    assert lite.mean == (0.498,) * 3 and lite.std == (0.502,) * 3 and "efficientnet-lite1" in why
    assert resolve(None, None, "pretrained:mobilenet_v2")[0].preset == "imagenet"
    assert resolve({"preset": "none"}, None, "pretrained:mobilenet_v2")[0].mean is None  # the command line wins


def test_photos_are_a_data_spec():
    from kit.data import load_data

    splits = load_data("photos", 32)
    assert splits.name == "photos" and splits.test.y is None and splits.test.x.shape[1:] == (3, 32, 32)
    assert splits.preprocess.preset == "imagenet" and splits.test.x.min() < 0  # normalised, not [0, 1]
