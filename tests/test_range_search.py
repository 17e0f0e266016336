"""Per-tensor activation ranges (kit.compress.range_search): the simulation the search scores is the
converted int8 graph's own result, the search never ends below where `auto` started, and its time
cap holds. Small models, the real PT2E/XNNPACK quantizer."""

from __future__ import annotations

import numpy as np
import torch

from kit.evaluate import sqnr_db
from tests.test_ptq_methods import images, relu6_net, run


def _prepared(net, data):
    from kit.compress.observers import set_mode
    from kit.compress.quantize import (calibrate, example_from, export_for_quant, prepare, xnnpack_config,
                                       xnnpack_quantizer)

    graph, _ = export_for_quant(net, example_from(data, None))
    prepared = prepare(graph, xnnpack_quantizer(xnnpack_config(True, observer="percentile")), "net")
    calibrate(prepared, data, len(data), 16)
    set_mode(prepared, "percentile", 99.9)
    return prepared


def test_the_simulated_prepared_graph_computes_what_the_converted_int8_graph_computes():
    from kit.compress.quantize import convert
    from kit.compress.range_search import simulated

    data = images()
    prepared = _prepared(relu6_net(), data)
    float_out = run(prepared, data.x)  # outside the block the observers pass values through
    with simulated(prepared):
        sim = run(prepared, data.x)
    converted = run(convert(prepared, "net", "test"), data.x)
    assert np.allclose(sim, converted, atol=1e-5), np.abs(sim - converted).max()
    assert not np.allclose(float_out, converted, atol=1e-4)  # the simulation is not the float model
    assert np.allclose(run(prepared, data.x), float_out)  # and the block restored the observers


def test_per_tensor_search_never_ends_below_the_global_choice_and_records_it():
    from kit.compress.quantize import Int8Static, quantize

    net, data = relu6_net(1), images(64)
    ref = run(net, data.x[:32])
    glob = quantize(net, Int8Static(calib_batches=2, range_search="none"), data, (1, 3, 16, 16))
    per = quantize(net, Int8Static(calib_batches=2), data, (1, 3, 16, 16))
    assert "per_tensor" not in glob.details["activation_ranges"]
    search = per.details["activation_ranges"]["per_tensor"]
    before, after = search["score_sqnr_db"]
    assert search["activations"] > 0 and after >= before and not search["stopped_at_time_cap"]
    assert before == per.details["activation_ranges"]["chosen"]["calib_sqnr_db"]  # it starts where auto ended
    got = sqnr_db(ref, run(per.module, data.x[:32]))
    assert got >= sqnr_db(ref, run(glob.module, data.x[:32])) - 0.05  # the shipped graph has what it scored
    assert abs(got - after) < 0.05
    assert len(search["moves"]) == min(search["moved"], 12)


def test_the_time_cap_stops_the_search_and_keeps_the_global_choice():
    from kit.compress.quantize import Int8Static, quantize

    q = quantize(relu6_net(), Int8Static(calib_batches=1, range_search_seconds=0.0), images(), (1, 3, 16, 16))
    search = q.details["activation_ranges"]["per_tensor"]
    assert search["stopped_at_time_cap"] and search["moved"] == 0


def test_a_wrong_range_search_value_is_one_line():
    import pytest

    from kit.compress.quantize import Int8Static
    from kit.errors import EdgeKitError

    with pytest.raises(EdgeKitError, match="range_search='all': choose per_tensor or none"):
        Int8Static(range_search="all")


def _onnx(net, path):
    torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False, input_names=["input"], output_names=["out"])
    return path


def test_ort_per_tensor_search_edits_the_qdq_model_it_scored(tmp_path):
    from kit.compress.ort_quant import OrtInt8Static, quantize_onnx
    from kit.package.onnx import OrtRunner

    net, data = relu6_net(1), images(64)
    src = _onnx(net, tmp_path / "m.onnx")
    x = data.x[:32]
    ref = run(net, x)

    def sqnr(path):
        r = OrtRunner(path)
        return sqnr_db(ref, np.concatenate([r(x[i:i + 1]) for i in range(len(x))]))

    from kit.compress.ort_calibration import quantize_best
    from kit.compress.ort_quant import preprocess

    pre = preprocess(src, tmp_path / "pre.onnx")
    glob = quantize_onnx(pre, OrtInt8Static(range_search="none", max_samples=64), data, tmp_path / "glob.onnx",
                         preprocessed=True)
    per = tmp_path / "per.onnx"
    info = quantize_best(pre, OrtInt8Static(max_samples=64), data, per, quantize_onnx)
    search = info["per_tensor"]
    before, after = search["score_sqnr_db"]
    assert search["activations"] > 0 and after >= before
    assert abs(before - sqnr(glob)) < 0.05  # the unedited model scores what the global choice shipped
    assert abs(after - sqnr(per)) < 0.05  # the file written is the model the search scored last
    assert sqnr(per) >= sqnr(glob) - 0.05
