"""torchvision detection/segmentation models as the kit deploys them (random weights: export,
quantize and bench only): SSDlite320-MobileNetV3 split at its raw head (one [N, A, 4+C] tensor;
torchvision's own forward with decode + NMS does not export) and LRASPP-MobileNetV3 returning its
"out" tensor, each int8 on both runtimes at a small input size and benched on `local`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

RECIPES = {"pte": ("x86-64-int8", ["compress.0.calib_batches=1"]),
           "onnx": ("x86-64-int8-ort", ["compress.0.max_samples=8"])}
SIZES = {"ssdlite": 128, "lraspp": 64}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/fixtures_threads.py


@pytest.fixture(scope="module")
def nets():
    from kit.tasks.segment import lraspp
    from kit.tasks.ssd import ssdlite_raw

    torch.manual_seed(0)
    return {"ssdlite": ssdlite_raw(SIZES["ssdlite"], num_classes=4), "lraspp": lraspp(num_classes=3)}


def test_ssdlite_raw_head_decode_matches_torchvision(nets):
    from torchvision.models.detection._utils import BoxCoder

    from kit.tasks.postprocess import ssd_decode
    from kit.tasks.ssd import postprocess

    raw = nets["ssdlite"]
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 1, (2, 3, 128, 128)).astype(np.float32))
    with torch.no_grad():
        out = raw(x).numpy()
    assert out.shape == (2, len(raw.anchors), 4 + 4)
    want = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode_single(torch.from_numpy(out[0, :, :4]), torch.from_numpy(raw.anchors))
    np.testing.assert_allclose(ssd_decode(out[0, :, :4], raw.anchors), want.numpy(), rtol=1e-4, atol=1e-3)
    dets = postprocess(out, raw.anchors, conf=0.0, max_det=10)
    assert len(dets) == 2 and dets[0]["boxes"].shape == (10, 4) and dets[0]["labels"].max() < 3


@pytest.mark.timeout(1200)  # MobileNetV3 int8 export on a shared 2-core machine
@pytest.mark.parametrize("runtime", ["pte", "onnx"])
@pytest.mark.parametrize("which", ["ssdlite", "lraspp"])
def test_torchvision_task_model_int8_exports_and_benches(which, runtime, nets, tmp_path):
    from kit.devices import BenchOptions
    from kit.package import Bundle
    from kit.pipeline.build import compress_job
    from kit.pipeline.measure import measure, open_device
    from kit.recipes import load_recipe
    from kit.results.store import ResultsStore
    from kit.splits import Dataset, Splits
    from kit.tasks.shapes import make_shapes

    size = SIZES[which]
    x = make_shapes(12, size, seed=3).images
    splits = Splits(train=Dataset(x[:4], None), calib=Dataset(x[4:8], None), test=Dataset(x[8:], None), num_classes=0,
                    name="shapes")
    name, smoke = RECIPES[runtime]
    rec = load_recipe(name, [f"input.image_size={size}", "budget.agreement=null", "budget.top1_drop=null", *smoke])
    built = compress_job(nets[which], rec, splits, tmp_path / "job", cache=False, name=which)
    report = built.report
    assert report["artifact"]["file"].endswith(".pte" if runtime == "pte" else ".onnx")
    assert report["steps"][-1]["method"] in ("quantize", "ort_quantize")
    want = [1, len(nets["ssdlite"].anchors), 8] if which == "ssdlite" else [1, 3, size, size]
    bundle = Bundle.load(built.bundle_path)
    assert list(np.load(built.bundle_path / "reference_output.npy").shape) == want  # one tensor: the raw head / "out"
    assert np.isfinite(report["artifact"]["agreement"]["sqnr_db"]) or report["artifact"]["agreement"]["sqnr_db"] == "inf"
    with ResultsStore(tmp_path / "r.db") as store, open_device("local") as device:
        got = measure(device, bundle, store, options=BenchOptions(runs=3, warmup=1))
    assert got.reference_passed is True and got.p50_ms > 0
