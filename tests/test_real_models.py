"""The real tier: real pretrained ImageNet models (offline weight packages) on crops of real
photos, through build -> bundle -> the local device agent, on both runtimes.

What must hold today: the weights are real (the cat photo's crops go to cat classes, confidently),
the fp32 artifacts agree with eager torch, the int8 artifacts are built, run on the device with
their reference check passed, and the shipped int8 recipes (ReLU6 fused, weights on their grid with
bias correction, percentile ranges chosen per model) beat naive MinMax int8 by a clear SQNR margin
with every MAC in int8. Full-size figures: benchmarks/real_models.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kit.devices.bench import BenchOptions, bench
from kit.devices.local import LocalDevice
from kit.models import pretrained, pretrained_spec, weights_file
from kit.package.bundle import Bundle
from kit.photos import TEST_PHOTOS, load_photos
from kit.pipeline.build import build
from kit.recipes.loader import load_recipe

SIZE, N_CALIB, N_TEST = 160, 32, 42  # CI budget: ~3 CPU-minutes for the whole file
CATS = range(281, 286)  # ImageNet's tabby, tiger cat, Persian, Siamese, Egyptian cat
OVERRIDES = [f"input.image_size={SIZE}", "input.channels=3", "budget.top1_drop=100", "budget.agreement=null", "bench.runs=5", "bench.warmup=1"]
FP32_ORT = ["runtime=onnxruntime", "format=onnx"]


@pytest.fixture(scope="module")
def mnv2():
    return pretrained("mobilenet_v2")


@pytest.fixture(scope="module")
def mnv2_photos():
    return load_photos(SIZE, N_CALIB, N_TEST, seed=0, preprocess=pretrained_spec("mobilenet_v2").preprocess)


def eager(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def build_and_bench(model, splits, recipe_name: str, extra: list[str], out, name: str = "mnv2"):
    recipe = load_recipe(recipe_name, overrides=OVERRIDES + extra)
    built = build(recipe, model, splits, out, name=f"{name}-{recipe_name}", cache=False)
    m = bench(LocalDevice(), Bundle.load(built.bundle_path), BenchOptions(runs=5, warmup=1, threads=recipe.threads))
    return built, m


def test_weights_are_found_and_named_when_missing():
    assert weights_file("mobilenet_v2").name == "mobilenet_v2-b0353104.pth"
    from kit.errors import EdgeKitError

    with pytest.raises(EdgeKitError, match="choose one of mobilenet_v2, efficientnet-lite1"):
        pretrained("resnet9000")


def test_photos_split_by_photo_and_deterministic():
    a = load_photos(64, 6, 9, seed=3, preprocess=None)
    b = load_photos(64, 2, 9, seed=3, preprocess=None)
    assert a.name == "photos" and a.test.y is None and a.calib.x.shape == (6, 3, 64, 64)
    assert np.array_equal(a.test.x, b.test.x)  # test crops do not depend on the calibration count
    assert 0.0 <= a.test.x.min() and a.test.x.max() <= 1.0
    c = load_photos(64, 6, 9, seed=4, preprocess=None)
    assert not np.array_equal(a.test.x, c.test.x)
    # no test crop is a calibration crop's pixels
    assert min(np.abs(t - k).mean() for t in a.test.x for k in a.calib.x) > 1e-3


def test_fixed_camera_split_cuts_disjoint_crops_of_the_same_photos():
    from kit.errors import EdgeKitError

    fixed = load_photos(64, 4, 16, seed=3, preprocess=None, same_photos=True, n_train=12)
    assert fixed.name == "photos-same-photos" and fixed.train.x.shape[0] == 12 and fixed.calib.x.shape[0] == 4
    assert np.array_equal(fixed.calib.x, fixed.train.x[:4])  # calibration: the first training crops
    assert np.array_equal(fixed.calib.x, load_photos(64, 4, 16, seed=3, preprocess=None, same_photos=True).calib.x)
    assert min(np.abs(t - k).mean() for t in fixed.test.x for k in fixed.train.x) > 1e-3
    with pytest.raises(EdgeKitError, match="n_train >= n_calib"):
        load_photos(64, 8, 4, same_photos=True, n_train=4)


def cat_and_confident_shares(model, splits) -> tuple[float, float]:
    probs = softmax(eager(model, splits.test.x))
    cat_crops = np.arange(TEST_PHOTOS.index("chelsea"), len(splits.test), len(TEST_PHOTOS))
    return float(np.isin(probs.argmax(1)[cat_crops], CATS).mean()), float((probs.max(1) > 0.5).mean())


def test_mobilenet_v2_is_really_pretrained(mnv2, mnv2_photos):
    cat_share, confident = cat_and_confident_shares(mnv2, mnv2_photos)
    print(f"mnv2 eager: chelsea crops to a cat class {cat_share:.2f}, confident crops {confident:.2f}")
    assert cat_share >= 0.9  # random weights give ~0
    assert confident >= 0.25


def test_efficientnet_lite1_is_pretrained_and_ships_as_int8_onnx(tmp_path):
    """The second real model (its forward flattens with x.view(bs, -1)) through ORT int8 QDQ (the
    .pte int8 path is in benchmarks/real_models.py: too slow for this tier)."""
    lite1 = pretrained("efficientnet-lite1")
    splits = load_photos(SIZE, 16, 24, seed=0, preprocess=pretrained_spec("efficientnet-lite1").preprocess)
    cat_share, confident = cat_and_confident_shares(lite1, splits)
    print(f"efficientnet-lite1 eager: chelsea crops to a cat class {cat_share:.2f}, confident crops {confident:.2f}")
    assert cat_share >= 0.8
    built, m = build_and_bench(lite1, splits, "x86-64-int8-ort", [], tmp_path, name="lite1")
    agreement = built.report["artifact"]["agreement"]
    print(f"efficientnet-lite1 x86-64-int8-ort: {agreement}, p50 {m.p50_ms:.2f} ms")
    assert m.reference_passed and agreement["top1_match"] > 0.3


@pytest.mark.parametrize("recipe_name,extra", [("x86-64-fp32", []), ("x86-64-fp32", FP32_ORT)], ids=["pte", "onnx"])
def test_fp32_artifact_agrees_with_eager(mnv2, mnv2_photos, recipe_name, extra, tmp_path):
    built, m = build_and_bench(mnv2, mnv2_photos, recipe_name, extra, tmp_path)
    agreement = built.report["artifact"]["agreement"]
    print(f"mnv2 fp32 {built.report['artifact']['file'].rsplit('.', 1)[-1]}: {agreement}, p50 {m.p50_ms:.2f} ms")
    assert agreement["top1_match"] >= 0.99
    assert agreement["sqnr_db"] > 40
    assert m.reference_passed and m.p50_ms > 0


# naive int8: MinMax ranges, no weight correction, and (ORT) int8 throughout: float islands raise
# SQNR on their own (the stem is where int8 loses most), so a naive build with them would blur what
# the accurate quantization adds
NAIVE = {"x86-64-int8": ["compress.0.observer=minmax", "compress.0.bias_correction=false"],
         "x86-64-int8-ort": ["compress.0.calibration=MinMax", "compress.0.bias_correction=false",
                             "compress.0.float_islands=none"]}


def quantize_info(report: dict) -> dict:
    return next(s["info"] for s in report["steps"] if "int8_macs_share" in s.get("info", {}))


@pytest.mark.parametrize("recipe_name", ["x86-64-int8", "x86-64-int8-ort"])
def test_int8_artifact_builds_runs_and_is_sane(mnv2, mnv2_photos, recipe_name, tmp_path):
    naive, _ = build_and_bench(mnv2, mnv2_photos, recipe_name, NAIVE[recipe_name], tmp_path / "naive")
    built, m = build_and_bench(mnv2, mnv2_photos, recipe_name, [], tmp_path)
    art = built.report["artifact"]
    fp32 = eager(mnv2, mnv2_photos.test.x)
    from kit.package import runner_for

    run = runner_for(art["file"])
    int8 = np.concatenate([run(x[None]) for x in mnv2_photos.test.x])
    confident = softmax(fp32).max(1) > 0.5
    match = fp32.argmax(1) == int8.argmax(1)
    print(f"mnv2 {recipe_name}: agreement {match.mean():.3f}, on {confident.sum()} confident crops "
          f"{match[confident].mean():.3f}, SQNR {art['agreement']['sqnr_db']:.1f} dB, {art['bytes']} bytes, "
          f"p50 {m.p50_ms:.2f} ms")
    assert abs(art["agreement"]["top1_match"] - match.mean()) < 1e-9  # the kit's figure is the artifact's
    assert art["bytes"] < 5_000_000  # int8 weights: ~3.5M parameters, not 14 MB of float
    assert m.reference_passed
    naive_sqnr = naive.report["artifact"]["agreement"]["sqnr_db"]
    info = quantize_info(built.report)
    print(f"  naive MinMax: SQNR {naive_sqnr:.1f} dB, agreement {naive.report['artifact']['agreement']['top1_match']:.3f}; "
          f"shipped ranges {info.get('activation_ranges', {}).get('chosen')}")
    assert art["agreement"]["sqnr_db"] > naive_sqnr + 2.0  # measured at 224 px: +7 dB (.pte), +3.8 dB (.onnx)
    assert match.mean() > 0.75
    islands = info.get("float_islands") or {"chosen": None}
    if recipe_name == "x86-64-int8-ort":  # float_islands: auto; what it keeps depends on this CPU
        assert islands["profiled_nodes"] == islands["nodes"] == 53  # ORT's profiler named every conv of both
        print(f"  float islands: {islands['why']}")
    floats = islands["chosen"] or []
    assert info.get("nodes_to_exclude", []) == floats  # in float: the measured prefix, nothing else
    # a float prefix is the stem (3 convs at most 7% of MobileNetV2's MACs); else int8 throughout
    assert info["int8_macs_share"] >= (0.95 if not floats else 0.9)
    assert info["weight_correction"]["bias_corrected"] > 40
    # the default rounding is input-aware (GPTQ) on every conv, depthwise ones included
    assert info["weight_correction"]["rounding"] == "gptq" and info["weight_correction"]["gptq_layers"] > 40
