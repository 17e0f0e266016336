"""The model zoo of the int8 crash test (tests/test_zoo.py) and of benchmarks/zoo.py: edge-sized
classification models with random weights, each through int8 on both runtimes (PT2E -> .pte,
ORT QDQ -> .onnx) into a bundle whose model runs on the example input."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

CLASSES = 5
SIZE = 64  # every model below accepts 64x64 (SqueezeNet's and RegNet's strides included)


def _tv(name: str, **kw):
    def make():
        import torchvision

        return getattr(torchvision.models, name)(weights=None, num_classes=CLASSES, **kw)

    return make


def _timm(name: str):
    def make():
        import timm

        return timm.create_model(name, pretrained=False, num_classes=CLASSES)

    return make


def _efficientnet_lite(name: str):
    def make():
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name(name, num_classes=CLASSES)

    return make


ZOO = {
    "mobilenet_v2": _tv("mobilenet_v2"),
    "mobilenet_v3_small": _tv("mobilenet_v3_small"),
    "efficientnet_b0": _tv("efficientnet_b0"),
    "resnet18": _tv("resnet18"),
    "shufflenet_v2_x0_5": _tv("shufflenet_v2_x0_5"),
    "squeezenet1_1": _tv("squeezenet1_1"),
    "mnasnet0_5": _tv("mnasnet0_5"),
    "regnet_y_400mf": _tv("regnet_y_400mf"),
    "timm:mobilenetv4_conv_small": _timm("mobilenetv4_conv_small"),
    "timm:efficientnet_lite0": _timm("efficientnet_lite0"),
    "timm:ghostnet_100": _timm("ghostnet_100"),
    "timm:lcnet_050": _timm("lcnet_050"),
    "efficientnet-lite-pytorch:lite0": _efficientnet_lite("efficientnet-lite0"),
}
RUNTIMES = ("executorch", "onnxruntime")


def make_model(name: str):
    import torch

    torch.manual_seed(0)
    return ZOO[name]().eval()


def calib_data(n: int = 8, size: int = SIZE):
    from kit.data import Dataset

    return Dataset(np.random.default_rng(0).random((n, 3, size, size), dtype=np.float32), None)


def int8_bundle(model, runtime: str, calib, out_dir: Path, name: str = "model", key=None):
    """int8 on `runtime` and a bundle of it: returns (bundle, output of the bundle's model on the
    example input). Raises EdgeKitError (one line) where a runtime or quantizer refuses the model."""
    from kit.compress.ort_quant import OrtInt8Static, quantize_onnx
    from kit.compress.quantize import Int8Static, quantize
    from kit.package import package, runner_for
    from kit.package.onnx import export_onnx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    example = calib.x[:1]
    if runtime == "executorch":
        q = quantize(model, Int8Static(calib_batches=1, batch_size=len(calib)), calib)
        bundle = package(q, "executorch", out_dir / "bundle", example, name=name, key=key)
    else:
        import torch

        fp32 = export_onnx(model, (torch.from_numpy(example),), out_dir / "fp32.onnx")
        q = quantize_onnx(fp32, OrtInt8Static(max_samples=len(calib)), calib, out_dir / "int8.onnx")
        bundle = package(q, "onnx", out_dir / "bundle", example, name=name, key=key)
    return bundle, np.asarray(runner_for(bundle.model_file)(example))


def run_one(name: str, runtime: str, out_dir: Path, key=None) -> dict:
    """One zoo cell as a JSON-able row: ok (and output shape) or the kit's one-line error."""
    from kit.errors import EdgeKitError

    t0 = time.time()
    row = {"model": name, "runtime": runtime}
    try:
        model = make_model(name)
    except ImportError as e:
        return {**row, "status": "unavailable", "error": str(e).splitlines()[0], "seconds": 0.0}
    try:
        bundle, out = int8_bundle(model, runtime, calib_data(), out_dir, name=name.replace(":", "-"), key=key)
        row.update(status="ok", output_shape=list(out.shape), finite=bool(np.isfinite(out).all()),
                   delegation=bundle.manifest.get("delegation", {}).get("coverage"))
    except EdgeKitError as e:
        row.update(status="refused", error=str(e))
    except Exception as e:  # noqa: BLE001 - a traceback is what the zoo exists to find
        row.update(status="traceback", error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
    row["seconds"] = round(time.time() - t0, 1)
    return row
