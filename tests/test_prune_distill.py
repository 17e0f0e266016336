"""Real-model tier: pruning + distillation from the original on the real MobileNetV2 (ImageNet
weights, offline) and crops of real photos, unlabelled: the fixed-camera scenario (train and test
crops disjoint, cut from the same photos), at a small resolution so the file stays within ~3 CPU
minutes. Full-size figures: benchmarks/prune_distill.py.
"""

from __future__ import annotations

import copy

import pytest
import torch

from kit.compress.repair import teacher_top1, top1_agreement
from kit.compress.structured import PruneStructured, prune_structured
from kit.models import pretrained, pretrained_spec
from kit.photos import load_photos
from kit.splits import Splits


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    was = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(was)


@pytest.fixture(scope="module")
def mnv2():
    return pretrained("mobilenet_v2")


def fixed_camera(size: int, n_train: int, n_test: int, seed: int = 0) -> Splits:
    return load_photos(size, n_train, n_test, seed, pretrained_spec("mobilenet_v2").preprocess, same_photos=True)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("seed", [0, 1])
def test_distillation_after_pruning_recovers_what_pruning_lost(mnv2, seed):
    splits = fixed_camera(96, 96, 48, seed)
    ref = teacher_top1(mnv2, splits.test.x)
    example = torch.zeros(1, 3, 96, 96)
    raw, _ = prune_structured(mnv2, PruneStructured(ratio=0.2, repair="none", reconstruct=False, seed=seed), example,
                              splits.train)
    seen = []
    # distillation on its own (the least-squares reconstruction that runs before it by default is
    # tested in test_reconstruction_recovers_more_than_distillation_on_few_images)
    repaired, info = prune_structured(mnv2, PruneStructured(ratio=0.2, epochs=4, lr=3e-3, seed=seed, reconstruct=False),
                                      example, splits.train, progress=lambda *a: seen.append(a))
    alone, fixed = top1_agreement(raw, ref, splits.test.x), top1_agreement(repaired, ref, splits.test.x)
    rep = info["repair"]
    assert rep["repair"] == "distill" and rep["teacher"] == "original" and rep["augment"] and rep["hint"]
    assert rep["train_images"] + rep["holdout_images"] == 96 and rep["holdout_images"] >= 8
    assert ("prune_structured repair", 1, 4) in seen  # a progress report per epoch
    # uniform 20% pruning of a pretrained MobileNetV2 loses most of its agreement; distilling from
    # the original on 96 unlabelled crops wins a large part of it back on crops it never saw
    assert alone < 0.3, alone
    assert fixed > alone + 0.25, (alone, fixed, rep)
    assert rep["holdout_agreement"][1] >= rep["holdout_agreement"][0]  # best weights restored


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("seed", [0, 1])
def test_reconstruction_recovers_agreement_that_pruning_lost(mnv2, seed):
    from kit.compress.netadapt import prune_unit, units
    from kit.compress.reconstruct import reconstruct

    splits = fixed_camera(96, 96, 48, seed)
    ref = teacher_top1(mnv2, splits.test.x)
    example = torch.zeros(1, 3, 96, 96)
    pruned = copy.deepcopy(mnv2)
    expansion = [u for u in units(pruned, example) if u.endswith("conv.1.0")]  # the inverted residuals' hidden channels
    assert len(expansion) == 16
    for u in expansion:
        prune_unit(pruned, example, u, 0.3)
    alone = top1_agreement(pruned, ref, splits.test.x)
    info = reconstruct(pruned, mnv2, splits.train.x)
    rebuilt = top1_agreement(pruned, ref, splits.test.x)
    # every projection conv behind a pruned expansion is refitted, in forward order, nothing else;
    # (layers skipped for too few rows would be named in info["skipped"])
    projections = [f"features.{i}.conv.2" for i in range(2, 18)]
    assert list(info["layers"]) + list(info["skipped"]) == projections, info
    assert info["skipped"] == {}, info
    assert all(0.0 <= r < 1.0 for r in info["layers"].values()), info
    assert alone < 0.35, alone
    assert rebuilt > alone + 0.25, (alone, rebuilt)


def test_repair_defaults_and_bad_fields_are_one_line():
    from kit.compress.registry import StepError, parse_step

    cfg = parse_step({"method": "prune_structured", "ratio": 0.3})
    assert cfg.repair == "distill" and cfg.epochs is None and not cfg.adaptive
    assert parse_step({"method": "lowrank"}).repair == "distill" and parse_step({"method": "prune"}).repair == "distill"
    na = parse_step({"method": "prune_structured", "target_macs_ratio": 0.6, "adapt": {"max_rounds": 2}})
    assert na.adaptive and na.adapt.max_rounds == 2 and na.ratio is None
    for step, text in [({"method": "prune_structured", "repair": "magic"}, "choose distill"),
                       ({"method": "prune_structured", "ratio": 0.3, "target_macs_ratio": 0.5}, "give one of ratio"),
                       ({"method": "prune_structured", "target_latency_ratio": 1.5}, "must be in (0, 1)"),
                       ({"method": "prune_structured", "adapt": {"rounds": 2}}, "no parameter 'rounds'")]:
        with pytest.raises(StepError, match=text.replace("(", r"\(").replace(")", r"\)")) as e:
            parse_step(step)
        assert "\n" not in str(e.value)


def test_block_sensitivity_orders_units(mnv2):
    from kit.compress.netadapt import _logits, prune_unit
    from kit.compress.sensitivity import block_sensitivity

    splits = fixed_camera(64, 24, 8)
    example = torch.zeros(1, 3, 64, 64)
    rows = block_sensitivity(mnv2, splits.train, example, ratios=(0.5,), eval_samples=24)
    units = [r["unit"] for r in rows]
    assert len(units) == len(set(units)) >= 20  # every channel group of MobileNetV2, once
    assert "features.5.conv.1.0" in units  # an inverted residual's expansion channels
    assert all(r["macs_saved"] > 0 and r["ms_saved"] is not None for r in rows)
    harm = [max(r["kl"], 0) / r["macs_saved"] for r in rows]
    assert harm == sorted(harm)
    ref = _logits(mnv2, splits.train.x)

    def kl_after(chosen):
        m = __import__("copy").deepcopy(mnv2)
        for r in chosen:
            prune_unit(m, example, r["unit"], 0.5)
        out = _logits(m, splits.train.x)
        return float(torch.nn.functional.kl_div(out.log_softmax(1), ref.log_softmax(1), log_target=True,
                                                reduction="batchmean"))

    # the order means something: the three least harmful units together hurt less than the three most
    assert kl_after(rows[:3]) < kl_after(rows[-3:])


@pytest.mark.timeout(1800)  # ~1.5 CPU-minutes; generous for a shared CPU
def test_netadapt_honours_its_target_and_resumes(mnv2, tmp_path, monkeypatch):
    from kit.compress.netadapt import netadapt

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path))
    splits = fixed_camera(32, 32, 8)
    example = torch.zeros(1, 3, 32, 32)
    cfg = PruneStructured(target_macs_ratio=0.8, min_agreement=0.0, epochs=1,
                          adapt={"step": 0.1, "ratios": [0.3], "scan_samples": 8, "max_rounds": 4})

    class Killed(Exception):
        pass

    def kill_after_round_1(label, done, total):
        if label == "prune_netadapt round" and done == 1:
            raise Killed

    with pytest.raises(Killed):
        netadapt(mnv2, mnv2, splits.train, cfg, example, progress=kill_after_round_1)
    rounds = []
    model, info = netadapt(mnv2, mnv2, splits.train, cfg, example, progress=lambda l, d, t: rounds.append((l, d)))
    assert info["resumed_rounds"] == 1 and ("prune_netadapt round", 1) not in rounds  # continued, not redone
    assert ("prune_netadapt round", 2) in rounds
    assert info["stopped"] == "target" and info["reached"]
    assert info["final"]["macs"] <= 0.8 * info["original"]["macs"] < info["rounds"][0]["cost"]["macs"]
    assert info["final"]["ms"] > 0 and info["original"]["ms"] > 0  # the host latency table was read
    assert sum(p.numel() for p in model.parameters()) == info["final"]["params"]
    with torch.no_grad():
        assert model(torch.from_numpy(splits.test.x)).shape == (8, 1000)
    # per-unit ratios, not one uniform cut: some groups lost channels, others kept all of theirs
    pruned = {u for r in info["rounds"] for u in r["pruned"]}
    assert 0 < len(pruned) < 20
    # each round refitted the layers its cut fed (least squares, before the round's distillation)
    assert all(r["reconstructed"]["layers"] >= 1 for r in info["rounds"]), info["rounds"]


def test_netadapt_counts_the_macs_of_conv_subclasses_with_their_own_forward():
    from torch import nn

    from kit.compress.netadapt import _cost

    class SamePad(nn.Conv2d):  # EfficientNet-Lite's Conv2dStaticSamePadding: F.conv2d in its own forward
        def forward(self, x):
            return nn.functional.conv2d(nn.functional.pad(x, (0, 1, 0, 1)), self.weight, self.bias, self.stride)

    net = nn.Sequential(SamePad(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    cost = _cost(net, torch.zeros(1, 3, 16, 16), None)
    assert cost["macs"] == 8 * 27 * 8 * 8 + 4 * 8 * 8 * 8  # both convs, the padded one included
    assert cost["params"] == sum(p.numel() for p in net.parameters()) and cost["ms"] is None


def test_netadapt_with_every_round_undone_returns_the_original_without_a_repair(mnv2, tmp_path, monkeypatch):
    from kit.compress.netadapt import netadapt

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path))
    splits = fixed_camera(32, 32, 8)
    example = torch.zeros(1, 3, 32, 32)
    # a floor of 1.0 after half of each chosen unit's channels went: the first round is undone
    cfg = PruneStructured(target_macs_ratio=0.5, min_agreement=1.0, epochs=2,
                          adapt={"step": 0.4, "ratios": [0.5], "scan_samples": 8, "max_rounds": 2, "round_epochs": 0})
    seen = []
    model, info = netadapt(mnv2, mnv2, splits.train, cfg, example, progress=lambda l, d, t: seen.append(l))
    assert info["stopped"].startswith("floor (round 1") and info["rounds"] == [] and not info["reached"]
    assert info["repair"] == {"repair": "skipped: no round kept, the model is the original"}
    assert "prune_netadapt repair" not in seen  # no host time spent distilling the original into itself
    assert info["final"]["macs"] == info["original"]["macs"]
    with torch.no_grad():
        x = torch.from_numpy(splits.test.x)
        assert torch.equal(model(x).argmax(1), mnv2(x).argmax(1))
