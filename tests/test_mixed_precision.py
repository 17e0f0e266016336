"""Accuracy-aware mixed precision (`keep_float: auto`, kit.compress.mixed_precision): the loop keeps
the fewest layers in float, honours min_int8_macs, names each float layer and why, checks only on
held-out calibration inputs; and it runs through the real quantizers of both runtimes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kit.compress.mixed_precision import Check, greedy_keep_float, split_holdout
from kit.data import Dataset
from kit.errors import EdgeKitError

MACS = {"a": 10, "b": 40, "c": 5, "d": 5}  # total 60


def scripted(gains: dict[str, float], base_db: float = 10.0):
    """An evaluate() whose held-out SQNR is base + the gains of the float layers; records calls."""
    calls = []

    def evaluate(float_layers):
        calls.append(list(float_layers))
        share = 1 - sum(MACS[n] for n in float_layers) / 60
        return Check(list(float_layers), base_db + sum(gains[n] for n in float_layers), 0.9, share)

    return evaluate, calls


def test_the_loop_stops_at_the_fewest_layers_that_meet_the_target():
    evaluate, calls = scripted({"a": 3.0, "b": 9.0, "c": 2.0, "d": 1.0})
    chosen, report = greedy_keep_float(["a", "c", "d", "b"], MACS, 60, evaluate, min_int8_macs=0.5,
                                       target_sqnr_db=14.5, target_agreement=None)
    assert chosen.float_layers == ["a", "c"] and report["met"]  # 10 + 3 + 2 = 15 >= 14.5: d is never tried
    assert calls == [[], ["a"], ["a", "c"]]
    assert [k["layer"] for k in report["kept_float"]] == ["a", "c"]
    assert "13.00 -> 15.00 dB" in report["kept_float"][1]["why"]


def test_nothing_goes_to_float_when_all_int8_already_meets_the_target():
    evaluate, calls = scripted({"a": 3.0, "b": 9.0, "c": 2.0, "d": 1.0})
    chosen, report = greedy_keep_float(["a", "b"], MACS, 60, evaluate, target_sqnr_db=9.0, target_agreement=0.9)
    assert chosen.float_layers == [] and report["met"] and calls == [[]]


def test_a_layer_without_gain_goes_back_to_int8_and_the_mac_floor_holds():
    evaluate, calls = scripted({"a": -0.5, "b": 9.0, "c": 2.0, "d": 1.0})
    chosen, report = greedy_keep_float(["a", "b", "c", "d"], MACS, 60, evaluate, min_int8_macs=0.7,
                                       target_sqnr_db=30.0, target_agreement=None)
    # a: no gain, back to int8; b (40 of 60 MACs) would leave 33% in int8 < 70%: never tried
    assert chosen.float_layers == ["c", "d"] and not report["met"] and "note" in report
    assert ["b"] not in calls and not any("b" in c for c in calls)
    why = {t["layer"]: t["result"] for t in report["tried"]}
    assert "no gain" in why["a"] and "min_int8_macs=0.7" in why["b"]
    assert chosen.int8_macs_share >= 0.7


def test_the_artifact_share_is_checked_too_and_limits_bound_the_cost():
    def evaluate(float_layers):  # the artifact reports less int8 than the estimate (e.g. a neighbour fell out)
        return Check(list(float_layers), 10.0 + len(float_layers), 0.9, 0.5 if "a" in float_layers else 1.0)

    chosen, report = greedy_keep_float(["a", "c", "d", "b"], MACS, 60, evaluate, min_int8_macs=0.8,
                                       target_sqnr_db=50.0, target_agreement=None, max_keep_float=1)
    assert chosen.float_layers == ["c"] and report["trials"] == 3
    assert "artifact had 50.0%" in report["tried"][0]["result"] and "limit reached" in report["tried"][-1]["result"]


def test_held_out_inputs_are_the_calibration_tail_and_small_sets_are_refused_in_one_line():
    data = Dataset(np.arange(40, dtype=np.float32).reshape(10, 1, 2, 2), None)
    part, held = split_holdout(data, 4, "quantize")
    assert len(part) == 6 and len(held) == 4 and held.x[0, 0, 0, 0] == 24.0
    assert len(split_holdout(data, 16, "quantize")[1]) == 5  # at most half is held out
    with pytest.raises(EdgeKitError, match="quantize keep_float=auto: needs at least 2"):
        split_holdout(Dataset(data.x[:1], None), 4, "quantize")


def test_bad_settings_are_one_line_errors():
    from kit.compress.ort_quant import OrtInt8Static
    from kit.compress.quantize import Int8Static

    with pytest.raises(EdgeKitError, match="keep_float='some'"):
        Int8Static(keep_float="some")
    with pytest.raises(EdgeKitError, match="min_int8_macs=1.5"):
        OrtInt8Static(keep_float="auto", min_int8_macs=1.5)


def outlier_net() -> nn.Module:
    """A small CNN whose Linear has one huge weight per row (on a feature that is always 0): int8 on
    that grid rounds every other weight to zero, so only a float Linear keeps the output."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 10))
    with torch.no_grad():
        net[0].bias[0] = -100.0  # channel 0 is dead after the ReLU
        net[3].weight[:, :36] = 500.0  # its weights set every row's int8 scale
    return net.eval()


def images(n: int, seed: int) -> Dataset:
    return Dataset(np.random.default_rng(seed).normal(size=(n, 3, 12, 12)).astype(np.float32), None)


def test_the_outlier_net_is_what_the_test_below_needs():
    x = torch.from_numpy(images(4, 3).x)
    with torch.no_grad():
        assert float(outlier_net()[:2](x)[:, 0].abs().max()) == 0.0


@pytest.mark.parametrize("method", ["quantize", "ort_quantize"])
def test_auto_runs_through_the_real_quantizer_and_names_the_float_layers(tmp_path, method):
    from kit.compress.base import StepContext
    from kit.compress.ort_quant import OrtInt8Static
    from kit.compress.quantize import Int8Static
    from kit.splits import Splits

    torch.set_num_threads(1)
    calib, test = images(24, 1), images(8, 2)
    splits = Splits(train=calib, calib=calib, test=test, num_classes=10, name="noise")
    common = dict(keep_float="auto", target_sqnr_db=40.0, target_agreement=None, holdout=8, max_trials=4,
                  min_int8_macs=0.5)
    cfg = (Int8Static(calib_batches=1, batch_size=16, observer="minmax", bias_correction=False, **common)
           if method == "quantize" else
           OrtInt8Static(calibration="MinMax", max_samples=16, activation_type="uint8", bias_correction=False, **common))
    ctx = StepContext(splits=splits, example=torch.zeros(1, 3, 12, 12), eval_data=test, original=outlier_net(),
                      workdir=tmp_path)
    result = cfg.apply(outlier_net(), ctx)
    mp = result.info["mixed_precision"]
    assert mp["held_out"].startswith("last 8 of 24") and mp["trials"] <= 4
    kept = [k["layer"] for k in mp["kept_float"]]
    named = result.config.skip_layers if method == "quantize" else result.config.nodes_to_exclude
    assert named == kept and len(kept) == 1  # the Linear, and nothing else, went to float
    assert kept[0] == "3" if method == "quantize" else any(k in kept[0].lower() for k in ("linear", "gemm", "matmul"))
    for k in mp["kept_float"]:  # each float layer paid for itself on the held-out inputs
        assert k["after"]["sqnr_db"] > k["before"]["sqnr_db"] and "held-out SQNR" in k["why"]
    assert mp["chosen"]["sqnr_db"] > mp["all_int8"]["sqnr_db"]
    assert result.info["int8_macs_share"] >= 0.5 and result.info["int8_macs_share"] == mp["chosen"]["int8_macs_share"]
