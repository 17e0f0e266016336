"""Int8 on models and data that used to end in a traceback: a forward that flattens with
`x.view(x.size(0), -1)` (EfficientNet-style; torchao's per-layer debugger met a `sym_size` node),
and calibration data holding NaN (ORT's `AssertionError: scale issue`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kit.data import Dataset, Splits
from kit.errors import EdgeKitError


class ViewFlattenNet(nn.Module):
    """Conv-BN-ReLU blocks, global pooling, then `x.view(x.size(0), -1)` into a Linear."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.pool(self.features(x))
        return self.fc(x.view(x.size(0), -1))


def _splits(n: int = 48, size: int = 16, name: str = "random") -> Splits:
    rng = np.random.default_rng(0)
    x = rng.random((n, 3, size, size), dtype=np.float32)
    y = rng.integers(0, 4, n).astype(np.int64)
    return Splits(Dataset(x, y), Dataset(x[:32], None), Dataset(x[32:], y[32:]), 4, name)


@pytest.fixture(scope="module")
def view_net():
    torch.manual_seed(0)
    return ViewFlattenNet().eval()


@pytest.mark.parametrize("recipe_name", ["x86-64-int8", "x86-64-int8-ort"])
def test_view_flatten_model_builds_with_a_report(view_net, recipe_name, tmp_path):
    from kit.pipeline.build import build
    from kit.recipes import load_recipe

    recipe = load_recipe(recipe_name)
    recipe = load_recipe(recipe_name, overrides=recipe.smoke)
    built = build(recipe, view_net, _splits(), tmp_path / "out", override_budget=True, cache=False)
    step = built.report["steps"][-1]
    assert built.bundle_path.is_dir() and built.report["artifact"]["agreement"]["sqnr_db"] > 10
    if recipe_name == "x86-64-int8":
        info = step["info"]
        assert info["worst_layers_sqnr"] and all(np.isfinite(r["sqnr_db"]) for r in info["worst_layers_sqnr"])
        # the shape arithmetic of x.size(0) is named as left out, not compared
        assert any("sym_size" in s["node"] for s in info["sqnr_skipped_nodes"])


def test_layer_sqnr_report_skips_shape_nodes(view_net):
    from kit.compress.quantize import Int8Static, quantize
    from kit.evaluate import layer_sqnr_report, per_layer_sqnr

    calib = _splits().calib
    q = quantize(view_net, Int8Static(calib_batches=1, batch_size=16), calib)
    assert q.batch_dynamic  # the graph that carries a sym_size node
    rows, skipped = layer_sqnr_report(q, calib, max_samples=4)
    assert {r["layer"] for r in rows} >= {"fc"} and rows == per_layer_sqnr(q, calib, max_samples=4)
    assert [s["node"] for s in skipped if "sym_size" in s["node"]]


def _nan_data(n: int = 16) -> Dataset:
    x = np.random.default_rng(1).random((n, 3, 16, 16), dtype=np.float32)
    x[3, 0, :2, :2] = np.nan
    x[5, 1, 0, 0] = np.inf
    return Dataset(x, None)


def test_nan_calibration_refused_at_the_pt2e_door(view_net):
    from kit.compress.quantize import Int8Static, quantize

    with pytest.raises(EdgeKitError) as err:
        quantize(view_net, Int8Static(calib_batches=1, batch_size=16), _nan_data())
    msg = str(err.value)
    assert "calibration data" in msg and "4 NaN and 1 Inf" in msg and "2 of 16 samples" in msg and "\n" not in msg


def test_nan_calibration_refused_at_the_ort_door(view_net, tmp_path):
    from kit.compress.ort_quant import OrtInt8Static, quantize_onnx
    from kit.package.onnx import export_onnx

    fp32 = export_onnx(view_net, (torch.zeros(1, 3, 16, 16),), tmp_path / "m.onnx")
    with pytest.raises(EdgeKitError) as err:
        quantize_onnx(fp32, OrtInt8Static(max_samples=16), _nan_data(), tmp_path / "q.onnx")
    assert "calibration data" in str(err.value) and "4 NaN and 1 Inf" in str(err.value)
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("runtime,method", [("executorch", "quantize"), ("onnxruntime", "ort_quantize")])
def test_nan_calibration_refused_by_run_chain(view_net, runtime, method):
    from kit.compress.chain import run_chain

    splits = _splits(name="npz:bad.npz")
    splits.calib = _nan_data()
    with pytest.raises(EdgeKitError) as err:
        run_chain(view_net, [{"method": method}], splits, runtime=runtime)
    assert "calibration data ('npz:bad.npz' calibration split)" in str(err.value)


def test_efficientnet_lite_package_compresses_through_the_chain():
    """The EfficientNet-Lite architecture of issue 14 (`x.view(bs, -1)` before its classifier), random
    weights at 32x32: the PT2E chain step completes and names the shape nodes it left out."""
    from efficientnet_lite_pytorch import EfficientNet

    from kit.compress.chain import run_chain

    torch.manual_seed(0)
    model = EfficientNet.from_name("efficientnet-lite0", num_classes=4).eval()
    result = run_chain(model, [{"method": "quantize", "calib_batches": 1, "batch_size": 8}],
                       _splits(n=40, size=32), eval_samples=8)
    info = result.report["steps"][0]["info"]
    assert info["worst_layers_sqnr"] and any("sym_size" in s["node"] for s in info["sqnr_skipped_nodes"])
    assert result.report["steps"][0]["agreement"]["sqnr_db"] > 0
