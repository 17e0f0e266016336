"""Latency-aware float islands (kit.compress.float_islands): ORT's own profiler names every
convolution of the float and the int8 model, the prefix estimate adds what float saves, a chosen
prefix really runs in float, and a prefix that is not faster is never kept. Real ONNX Runtime on a
small net; which prefix wins depends on this CPU, so the tests assert what holds on any CPU."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from kit.compress.float_islands import (choose_float_islands, node_ms, prefix_candidates, quantizable_order,
                                        timing_config, try_prefixes, weight_shares)
from kit.compress.ort_quant import OrtInt8Static, preprocess, quantize_onnx
from kit.data import Dataset
from kit.errors import EdgeKitError
from kit.package.onnx import export_onnx


def stem_net() -> nn.Module:
    """A MobileNet-style stem: a 3-channel first conv, a depthwise, pointwise layers, a classifier."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU6(), nn.Conv2d(32, 32, 3, 1, 1, groups=32), nn.ReLU6(),
                         nn.Conv2d(32, 16, 1), nn.Conv2d(16, 64, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 10)).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("islands")
    data = Dataset(np.random.default_rng(0).normal(size=(24, 3, 96, 96)).astype(np.float32), None)
    pre = preprocess(export_onnx(stem_net(), (torch.zeros(1, 3, 96, 96),), tmp / "fp32.onnx"), tmp / "pre.onnx")
    # the stem's first conv holds a quarter of this small net's weights: the size guard is off here
    cfg = OrtInt8Static(calibration="MinMax", bias_correction=False, max_samples=16, activation_type="uint8",
                        float_islands_max_weight_share=1.0)
    int8 = quantize_onnx(pre, cfg, data, tmp / "int8.onnx", preprocessed=True)
    return pre, int8, cfg, data, tmp


def _quantizer(pre):
    return functools.partial(quantize_onnx, pre, preprocessed=True)


def _float_convs(path) -> set[str]:
    """Conv nodes of a QDQ model whose weight is a plain float initializer (not DequantizeLinear's)."""
    graph = onnx.load(str(path)).graph
    inits = {i.name for i in graph.initializer}
    return {n.name for n in graph.node if n.op_type == "Conv" and n.input[1] in inits}


def test_the_profiler_names_every_layer_of_the_float_and_the_int8_model(models):
    pre, int8, _, data, _ = models
    order, tensors = quantizable_order(pre)
    assert len(order) == 5  # four convolutions and the classifier
    x = data.x[:1]
    fp32_ms, int8_ms = node_ms(pre, x, order, tensors), node_ms(int8, x, order, tensors)
    # ORT renames what it fuses (Conv+Clip -> <output>_nchwc, QDQ -> <node>_token_<n>): all found again
    assert set(fp32_ms) == set(order) and set(int8_ms) == set(order)
    assert all(v > 0 for v in [*fp32_ms.values(), *int8_ms.values()])


def test_prefix_candidates_add_what_float_saves_and_stop_at_an_unnamed_layer():
    order = ["a", "b", "c", "d", "e"]
    fp32 = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0, "e": 1.0}
    int8 = {"a": 1.5, "b": 1.2, "c": 0.5, "d": 0.1, "e": 0.9}
    got = prefix_candidates(order, fp32, int8)
    assert [k for k, _ in got] == [2, 1, 3]  # savings 0.7, 0.5, 0.2; 4- and 5-prefixes lose
    assert got[0][1] == pytest.approx(0.7)
    assert prefix_candidates(order, fp32, int8, keep=1) == [(2, pytest.approx(0.7))]
    del int8["b"]  # the profiler did not name b: nothing is estimated past it, e is never reached
    assert [k for k, _ in prefix_candidates(order, fp32, int8)] == [1]


def test_a_chosen_prefix_runs_in_float_and_the_config_names_it(models):
    pre, int8, cfg, data, tmp = models
    order, _ = quantizable_order(pre)
    forced = dataclasses.replace(cfg, float_islands_min_gain=-100.0)  # any prefix is kept
    applied, info = try_prefixes(order, [(2, 0.1), (1, 0.05)], forced, data, _quantizer(pre), int8,
                                 data.x[:1])
    k = len(info["chosen"])
    assert info["chosen"] == order[:k] and k in (1, 2)
    assert applied.nodes_to_exclude == order[:k]
    rows = {r["float_prefix"]: r["ms"] for r in info["candidates"]}
    assert rows[k] == min(rows.values()) and info["speedup"] == pytest.approx(info["all_int8_ms"] / rows[k], abs=2e-3)
    # the accurate quantization that follows keeps those and only those in float
    out = quantize_onnx(pre, applied, data, tmp / "forced.onnx", preprocessed=True)
    assert _float_convs(out) == set(order[:k]) and _float_convs(int8) == set()


def test_a_prefix_that_is_not_faster_is_never_kept(models):
    pre, int8, cfg, data, tmp = models
    order, _ = quantizable_order(pre)
    strict = dataclasses.replace(cfg, float_islands_min_gain=0.99)  # 100x faster: impossible
    applied, info = try_prefixes(order, [(1, 0.1)], strict, data, _quantizer(pre), int8, data.x[:1])
    assert info["chosen"] is None and "faster than all-int8" in info["why"]
    assert applied is strict and applied.nodes_to_exclude == []


def test_a_timing_trial_quantizes_quickly_but_with_the_same_kernels(models):
    pre, _, cfg, data, tmp = models
    slow = dataclasses.replace(cfg, calibration="auto", range_search="per_tensor", max_samples=256)
    quick = timing_config(slow)
    assert (quick.calibration, quick.range_search, quick.max_samples) == ("MinMax", "none", 8)
    assert (quick.activation_type, quick.per_channel, quick.weight_type) == (slow.activation_type, slow.per_channel,
                                                                             slow.weight_type)
    ops = lambda p: sorted(n.op_type for n in onnx.load(str(p)).graph.node)  # noqa: E731
    a = quantize_onnx(pre, quick, data, tmp / "quick.onnx", preprocessed=True)
    b = quantize_onnx(pre, dataclasses.replace(cfg, calibration="Percentile"), data, tmp / "pct.onnx", preprocessed=True)
    assert ops(a) == ops(b)


def test_auto_on_this_cpu_either_keeps_all_int8_or_a_faster_float_prefix(models):
    pre, _, cfg, data, tmp = models
    auto = dataclasses.replace(cfg, float_islands="auto")
    applied, info = choose_float_islands(pre, auto, data, _quantizer(pre))
    assert info["profiled_nodes"] == info["nodes"] == 5
    if info["chosen"] is None:
        assert applied.nodes_to_exclude == []
    else:
        assert set(info["chosen"]) == set(applied.nodes_to_exclude)
        assert info["speedup"] >= 1 / (1 - auto.float_islands_min_gain) - 1e-3
    print("float islands here:", info["why"])


def test_the_ort_quantize_step_applies_the_choice(tmp_path):
    from kit.compress.base import StepContext
    from kit.splits import Splits

    torch.set_num_threads(1)
    x = Dataset(np.random.default_rng(1).normal(size=(24, 3, 96, 96)).astype(np.float32), None)
    splits = Splits(train=x, calib=x, test=x, num_classes=10, name="noise")
    cfg = OrtInt8Static(calibration="MinMax", bias_correction=False, max_samples=16, activation_type="uint8",
                        float_islands="auto", float_islands_min_gain=-100.0,  # a prefix is always kept
                        float_islands_max_weight_share=1.0)
    ctx = StepContext(splits=splits, example=torch.zeros(1, 3, 96, 96), eval_data=x, original=stem_net(),
                      workdir=tmp_path)
    result = cfg.apply(stem_net(), ctx)
    chosen = result.info["float_islands"]["chosen"]
    assert chosen and result.config.nodes_to_exclude == chosen == result.info["nodes_to_exclude"]
    assert _float_convs(result.model) == set(chosen)


def test_a_prefix_holding_much_of_the_weights_is_never_tried(models):
    pre, _, cfg, data, _ = models
    order, _ = quantizable_order(pre)
    shares = weight_shares(pre, order)
    assert shares == sorted(shares) and shares[-1] == pytest.approx(1.0, abs=0.01) and 0.2 < shares[0] < 0.3
    guarded = dataclasses.replace(cfg, float_islands="auto", float_islands_min_gain=-100.0,
                                  float_islands_max_weight_share=0.05)
    applied, info = choose_float_islands(pre, guarded, data, _quantizer(pre))
    assert info["chosen"] is None and "of the weights" in info["why"] and "first layer alone" in info["why"]
    assert applied is guarded


def test_bad_float_islands_settings_get_one_line():
    with pytest.raises(EdgeKitError, match="float_islands='yes'"):
        OrtInt8Static(float_islands="yes")
    with pytest.raises(EdgeKitError, match="min_gain below 1"):
        OrtInt8Static(float_islands_min_gain=1.5)
    with pytest.raises(EdgeKitError, match="weight share in"):
        OrtInt8Static(float_islands_max_weight_share=2.0)
