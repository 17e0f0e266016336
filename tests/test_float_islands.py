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
                                        try_prefixes)
from kit.compress.ort_quant import OrtInt8Static, _quantize_to, preprocess, quantize_onnx
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
    cfg = OrtInt8Static(calibration="MinMax", bias_correction=False, max_samples=16, activation_type="uint8")
    int8 = quantize_onnx(pre, cfg, data, tmp / "int8.onnx", preprocessed=True)
    return pre, int8, cfg, data, tmp


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
    int8 = {"a": 1.5, "b": 1.2, "c": 0.5, "d": 0.1, "e": 3.0}
    got = prefix_candidates(order, fp32, int8)
    assert [k for k, _ in got] == [2, 1, 3]  # savings 0.7, 0.5, 0.2; a 4-prefix saves -0.7
    assert got[0][1] == pytest.approx(0.7)
    assert prefix_candidates(order, fp32, int8, keep=1) == [(2, pytest.approx(0.7))]
    del int8["b"]  # the profiler did not name b: nothing is estimated past it, e is never reached
    assert [k for k, _ in prefix_candidates(order, fp32, int8)] == [1]


def test_a_chosen_prefix_runs_in_float_and_the_config_names_it(models):
    pre, int8, cfg, data, tmp = models
    out = tmp / "forced.onnx"
    out.write_bytes(int8.read_bytes())
    order, _ = quantizable_order(pre)
    forced = dataclasses.replace(cfg, float_islands_min_gain=-100.0)  # any prefix is kept
    applied, info, _ = try_prefixes(order, [(2, 0.1), (1, 0.05)], forced, data, out,
                                    functools.partial(_quantize_to, pre), data.x[:1])
    k = len(info["chosen"])
    assert info["chosen"] == order[:k] and k in (1, 2)
    assert applied.nodes_to_exclude == order[:k]
    assert _float_convs(out) == set(order[:k])  # those and only those run in float
    assert _float_convs(int8) == set()
    rows = {r["float_prefix"]: r["ms"] for r in info["candidates"]}
    assert rows[k] == min(rows.values()) and info["speedup"] == pytest.approx(info["all_int8_ms"] / rows[k], abs=2e-3)


def test_a_prefix_that_is_not_faster_is_never_kept(models):
    pre, int8, cfg, data, tmp = models
    out = tmp / "strict.onnx"
    out.write_bytes(int8.read_bytes())
    before = out.read_bytes()
    order, _ = quantizable_order(pre)
    strict = dataclasses.replace(cfg, float_islands_min_gain=0.99)  # 100x faster: impossible
    applied, info, ranges = try_prefixes(order, [(1, 0.1)], strict, data, out, functools.partial(_quantize_to, pre),
                                         data.x[:1])
    assert info["chosen"] is None and "faster than all-int8" in info["why"] and ranges is None
    assert applied is strict and out.read_bytes() == before
    assert not list(tmp.glob("*.islands"))  # the trial models are gone


def test_auto_on_this_cpu_either_keeps_all_int8_or_a_faster_float_prefix(models):
    pre, int8, cfg, data, tmp = models
    out = tmp / "auto.onnx"
    out.write_bytes(int8.read_bytes())
    auto = dataclasses.replace(cfg, float_islands="auto")
    applied, info, _ = choose_float_islands(pre, auto, data, out, functools.partial(_quantize_to, pre))
    assert info["profiled_nodes"] == info["nodes"] == 5
    if info["chosen"] is None:
        assert applied.nodes_to_exclude == [] and _float_convs(out) == set()
    else:
        assert _float_convs(out) == set(info["chosen"]) == set(applied.nodes_to_exclude)
        assert info["speedup"] >= 1 / (1 - auto.float_islands_min_gain) - 1e-3
    print("float islands here:", info["why"])


def test_bad_float_islands_settings_get_one_line():
    with pytest.raises(EdgeKitError, match="float_islands='yes'"):
        OrtInt8Static(float_islands="yes")
    with pytest.raises(EdgeKitError, match="min_gain below 1"):
        OrtInt8Static(float_islands_min_gain=1.5)
