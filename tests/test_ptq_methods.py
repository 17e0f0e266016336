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


def test_gptq_rounding_stays_on_the_grid_and_beats_nearest_rounding_layer_by_layer():
    from kit.compress.gptq_rounding import gptq_round, hessians, output_error
    from kit.compress.weight_correction import correct_weights, correctable_layers, round_to_grid

    net = relu6_net()
    # neighbouring pixels correlated, as in photos (on white noise input-aware rounding has nothing to use)
    coarse = np.random.default_rng(2).normal(size=(48, 3, 4, 4)).astype(np.float32)
    data = Dataset(np.repeat(np.repeat(coarse, 4, 2), 4, 3) + 0.1 * images().x, None)
    layers = correctable_layers(net)
    hs = hessians(net, layers, torch.from_numpy(data.x))
    assert hs["0"].shape == (27, 27) and hs["3"].shape == (16, 9, 9)  # depthwise: one k x k Hessian per channel
    for name, m in layers:
        w = m.weight.data
        q, near = gptq_round(w, hs[name]), round_to_grid(w)
        assert torch.equal(round_to_grid(q), q)  # on the same grid: the quantizer re-finds it exactly
        assert torch.equal(q.flatten(1).abs().amax(1), near.flatten(1).abs().amax(1))  # same scale per channel
        assert not torch.equal(q, near)
        assert output_error(w, q, hs[name]) < 0.9 * output_error(w, near, hs[name]), name
    ref = run(net, data.x)
    gptq, info = correct_weights(net, data, bias=False, rounding="gptq")
    nearest, _ = correct_weights(net, data, bias=False)
    assert info["gptq_layers"] == 4 and info["nearest_layers"] == []
    assert sqnr_db(ref, run(gptq, data.x)) > sqnr_db(ref, run(nearest, data.x)) + 1.0


def test_gptq_rounding_unfolds_a_padding_conv_subclass_and_refuses_an_unknown_mode():
    from kit.compress.gptq_rounding import hessians
    from kit.compress.quantize import Int8Static
    from kit.errors import EdgeKitError

    class SamePad(nn.Conv2d):  # EfficientNet-Lite's Conv2dStaticSamePadding: pads in forward
        def __init__(self):
            super().__init__(3, 8, 3, stride=2, padding=0)
            self.static_padding = nn.ZeroPad2d((0, 1, 0, 1))

        def forward(self, x):
            return super().forward(self.static_padding(x))

    conv = SamePad()
    h = hessians(conv, [("c", conv)], torch.from_numpy(images(4).x))["c"]
    assert h.shape == (27, 27) and bool((torch.linalg.eigvalsh(h) > -1e-6).all())
    with pytest.raises(EdgeKitError, match="rounding='fancy': choose gptq"):
        Int8Static(rounding="fancy")


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
