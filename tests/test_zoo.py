"""The int8 zoo crash test (issue 14, Build 2): edge-sized classification models with random
weights through int8 on both runtimes (PT2E -> .pte, ORT QDQ -> .onnx), each into a signed bundle
whose model runs on the example input. A representative subset runs here (the CI budget); the
whole zoo, torchvision's eight and timm's mobile families, is benchmarks/zoo.py (JSON per cell)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.fixtures_zoo import CLASSES, calib_data, int8_bundle, make_model

# Chosen to cover the op families the zoo holds, cheaply: hardswish + squeeze-excitation +
# `flatten` (MobileNetV3-Small), concat-heavy fire modules with ceil-mode pooling (SqueezeNet 1.1).
SUBSET = ["mobilenet_v3_small", "squeezenet1_1"]


@pytest.mark.parametrize("runtime", ["executorch", "onnxruntime"])
@pytest.mark.parametrize("name", SUBSET)
def test_zoo_model_int8_bundle_runs(name, runtime, tmp_path):
    calib = calib_data(n=4)
    bundle, out = int8_bundle(make_model(name), runtime, calib, tmp_path, name=name)
    assert out.shape == (1, CLASSES) and np.isfinite(out).all()
    assert bundle.model_file.suffix == (".pte" if runtime == "executorch" else ".onnx")
    if runtime == "executorch":
        deleg = bundle.manifest["delegation"]
        assert deleg["coverage"] > 0.9, deleg  # int8 compute runs in XNNPACK, not portable kernels
    else:
        import onnx

        ops = {n.op_type for n in onnx.load(str(bundle.model_file)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops


class _Spectrum(nn.Module):
    def forward(self, x):
        return torch.fft.rfft2(x).abs()  # complex tensors: ExecuTorch's edge dialect refuses the abs


class FftNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.spectrum = _Spectrum()
        self.fc = nn.Linear(4, CLASSES)

    def forward(self, x):
        return self.fc(self.spectrum(self.conv(x)).mean((2, 3)))


def test_op_a_runtime_cannot_take_is_named_in_one_line(tmp_path):
    from kit.errors import EdgeKitError

    model, calib = FftNet().eval(), calib_data(n=4, size=16)
    with pytest.raises(EdgeKitError) as err:
        int8_bundle(model, "executorch", calib, tmp_path / "pte")
    msg = str(err.value)
    assert "\n" not in msg and "op aten.abs" in msg and "layer spectrum" in msg and "onnxruntime" in msg
    _, out = int8_bundle(model, "onnxruntime", calib, tmp_path / "onnx")  # the other runtime takes it
    assert out.shape == (1, CLASSES)
