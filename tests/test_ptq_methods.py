"""The int8 methods that keep a real model's accuracy, each on its own (small models, real
quantizers): weights on their grid with bias correction, percentile ranges with graph outputs never
clipped, Conv+ReLU6 quantized as one op (and still fully delegated), the share of MACs in int8 read
from the artifact, and `auto` choosing among candidate ranges."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kit.data import Dataset
from kit.evaluate import sqnr_db


def relu6_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
                        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
                        nn.Conv2d(16, 24, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))
    with torch.no_grad():  # BatchNorm statistics that are not the identity, as in a trained network
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return net.eval()


def images(n: int = 48, size: int = 16, seed: int = 1) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(rng.normal(size=(n, 3, size, size)).astype(np.float32), None)


def run(m, x):
    with torch.no_grad():
        return m(torch.from_numpy(x)).detach().numpy()


def test_weights_land_on_the_int8_grid_and_bias_correction_removes_the_shift():
    from kit.compress.weight_correction import correct_weights, round_to_grid

    net, data = relu6_net(), images()
    grid_only, _ = correct_weights(net, data, bias=False)
    corrected, info = correct_weights(net, data)
    conv = corrected[0].weight.data
    assert torch.equal(round_to_grid(conv), conv)  # already on the grid: the quantizer re-finds it exactly
    assert not torch.equal(corrected[0].weight.data, net[0].weight.data)  # and the user's model is untouched
    assert info["bias_corrected"] == 4 and corrected[3].bias is not None  # a bias-free conv got one
    ref = run(net, data.x)
    assert sqnr_db(ref, run(corrected, data.x)) > sqnr_db(ref, run(grid_only, data.x))


def test_per_tensor_weights_skip_the_correction_with_a_note():
    from kit.compress.quantize import Int8Static, quantize

    q = quantize(relu6_net(), Int8Static(per_channel=False, calib_batches=1), images(), (1, 3, 16, 16))
    assert "skipped" in q.details["weight_correction"]


def test_conv_relu6_is_one_quantized_op_and_stays_delegated(tmp_path):
    from kit.compress.quantize import Int8Static, quantize
    from kit.package.executorch import export_pte

    q = quantize(relu6_net(), Int8Static(observer="minmax", bias_correction=False, calib_batches=1), images(),
                 (1, 3, 16, 16))
    for node in q.module.graph.nodes:
        if "hardtanh" in str(node.target):
            producer = node.args[0]
            assert "conv" in str(producer.target), f"{producer.name} -> {node.name}: a q/dq pair between conv and ReLU6"
    d = export_pte(q.module, q.example_input, tmp_path / "m.pte")
    assert d.non_delegated_nodes == 0 or set(d.non_delegated_ops) <= {"aten.view_copy.default"}


def test_percentile_ranges_clip_outliers_but_never_the_outputs():
    from torchao.quantization.pt2e import MinMaxObserver

    from kit.compress.observers import RangeObserver

    x = torch.randn(100_000)
    x[:5] = 60.0  # a handful of outliers
    obs = RangeObserver(mode="percentile", percentile=99.99, dtype=torch.qint8, quant_min=-128, quant_max=127)
    full = MinMaxObserver(dtype=torch.qint8, quant_min=-128, quant_max=127)
    obs(x), full(x)
    assert obs.calculate_qparams()[0] < full.calculate_qparams()[0] / 5
    obs.mode = "minmax"  # one calibration serves every mode
    assert torch.allclose(obs.calculate_qparams()[0], full.calculate_qparams()[0])


def test_auto_picks_a_candidate_and_records_what_it_tried():
    from kit.compress.quantize import AUTO_CANDIDATES, Int8Static, quantize
    from kit.compress.observers import observers, output_observers

    q = quantize(relu6_net(), Int8Static(calib_batches=1), images(), (1, 3, 16, 16))
    ranges = q.details["activation_ranges"]
    assert len(ranges["candidates"]) == len(AUTO_CANDIDATES)
    assert ranges["chosen"]["calib_sqnr_db"] == max(c["calib_sqnr_db"] for c in ranges["candidates"])


@pytest.mark.parametrize("runtime", ["executorch", "onnxruntime"])
def test_int8_macs_share_is_read_from_the_artifact(runtime, tmp_path):
    from kit.compress.int8_share import artifact_share

    net, data = relu6_net(), images()
    if runtime == "executorch":
        from kit.compress.quantize import Int8Static, quantize

        full = artifact_share(quantize(net, Int8Static(calib_batches=1), data, (1, 3, 16, 16)))
        part = artifact_share(quantize(net, Int8Static(calib_batches=1, skip_layers=["0"]), data, (1, 3, 16, 16)))
    else:
        from kit.compress.ort_quant import OrtInt8Static, quantize_onnx, quantizable_nodes
        from kit.package.onnx import export_onnx

        fp32 = export_onnx(net, (torch.zeros(1, 3, 16, 16),), tmp_path / "m.onnx")
        full = artifact_share(quantize_onnx(fp32, OrtInt8Static(max_samples=16), data, tmp_path / "q.onnx"))
        first = quantizable_nodes(fp32)[0]
        part = artifact_share(quantize_onnx(fp32, OrtInt8Static(max_samples=16, nodes_to_exclude=[first]), data,
                                            tmp_path / "p.onnx"))
    assert full["int8_macs_share"] == 1.0 and full["float_layers"] == []
    assert 0.0 < part["int8_macs_share"] < 1.0 and len(part["float_layers"]) == 1
    # the first conv: 16x16 outputs x 16 channels x 27 MACs of 10,064 per output pixel... in total
    assert part["macs"] == full["macs"]
