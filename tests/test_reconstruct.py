"""Least-squares reconstruction after channel pruning (kit.compress.reconstruct) on a small CNN:
the refitted layer reproduces the original's output from the pruned inputs, a bias-free conv's
intercept lands in the BatchNorm after it, layers with too few rows are named and left alone."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from kit.compress.netadapt import prune_unit
from kit.compress.reconstruct import reconstruct


def small_cnn(bias: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.Conv2d(24, 16, 1, bias=bias), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


def images(n: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def layer_error(student, teacher, name, x) -> float:
    out = {}
    hs = [m.get_submodule(name).register_forward_hook(lambda mod, a, o, k=k: out.__setitem__(k, o))
          for k, m in (("s", student), ("t", teacher))]
    with torch.no_grad():
        student(torch.from_numpy(x)), teacher(torch.from_numpy(x))
    for h in hs:
        h.remove()
    return float(((out["s"] - out["t"]) ** 2).mean() / out["t"].var())


@pytest.mark.parametrize("bias", [True, False])
def test_the_layer_fed_by_pruned_channels_reproduces_the_original(bias):
    teacher = small_cnn(bias)
    with torch.no_grad():  # a BatchNorm with real statistics, so the intercept matters
        teacher[1].running_mean.uniform_(-1, 1)
        teacher[4].running_var.uniform_(0.5, 2)
    pruned = copy.deepcopy(teacher)
    example = torch.zeros(1, 3, 16, 16)
    assert prune_unit(pruned, example, "0", 0.5) == (24, 12)
    x, held = images(), images(16, seed=1)
    # the BN after the 1x1 conv (index 4), then ReLU: compare the BN's output, where the intercept shows
    before = layer_error(pruned, teacher, "4", held)
    mean_before = pruned[4].running_mean.clone()
    info = reconstruct(pruned, teacher, x)
    after = layer_error(pruned, teacher, "4", held)
    assert list(info["layers"]) == ["3"] and info["skipped"] == {}, info
    assert pruned[3].weight.shape == (16, 12, 1, 1)
    assert after < 0.5 * before, (before, after)  # on images the fit never saw
    assert 0.0 <= info["layers"]["3"] < 1.0
    if not bias:
        assert not torch.equal(pruned[4].running_mean, mean_before)  # the intercept went into the BN


def test_nothing_pruned_nothing_refitted():
    teacher = small_cnn(True)
    student = copy.deepcopy(teacher)
    info = reconstruct(student, teacher, images())
    assert info["layers"] == {} and info["skipped"] == {}
    assert all(torch.equal(a, b) for a, b in zip(student.state_dict().values(), teacher.state_dict().values()))


def test_a_linear_layer_with_too_few_rows_is_named_and_left_alone():
    teacher = small_cnn(True)
    pruned = copy.deepcopy(teacher)
    example = torch.zeros(1, 3, 16, 16)
    prune_unit(pruned, example, "3", 0.5)  # the 1x1 conv's outputs: the Linear's inputs shrink to 8
    w = pruned[8].weight.clone()
    info = reconstruct(pruned, teacher, images(8))  # 8 rows for 8 inputs + intercept
    assert "8" in info["skipped"] and "8 rows for 8 inputs" in info["skipped"]["8"], info
    assert torch.equal(pruned[8].weight, w)
    info = reconstruct(pruned, teacher, images(64))
    assert "8" in info["layers"], info


def expansion_cnn() -> nn.Module:
    # stem, a 1x1 expansion, a depthwise conv, a 1x1 projection: MobileNetV2's inverted residual
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


def test_layers_whose_outputs_were_cut_are_refitted_to_the_channels_they_kept():
    """An expansion (1x1) and a depthwise conv whose output channels were cut, fed by a stem that
    an earlier cut perturbed: each is refitted to the original's output of the channels it kept,
    which lowers its error on images the fit never saw; the projection after them too."""
    from kit.compress.reconstruct import kept_channels

    teacher = expansion_cnn()
    pruned = copy.deepcopy(teacher)
    with torch.no_grad():  # an upstream error the later layers can compensate for
        pruned[0].weight.add_(0.3 * pruned[0].weight.std() * torch.randn_like(pruned[0].weight))
    example = torch.zeros(1, 3, 16, 16)
    assert prune_unit(pruned, example, "3", 0.5) == (32, 16)  # the expansion's outputs and the depthwise channels
    kept = kept_channels(pruned[3].weight, teacher[3].weight)
    assert kept is not None and len(kept) == 16 and kept == sorted(kept)
    assert kept_channels(pruned[6].weight, teacher[6].weight) == kept

    def channel_error(name, x):
        out = {}
        hs = [m.get_submodule(name).register_forward_hook(lambda mod, a, o, k=k: out.__setitem__(k, o))
              for k, m in (("s", pruned), ("t", teacher))]
        with torch.no_grad():
            pruned(torch.from_numpy(x)), teacher(torch.from_numpy(x))
        for h in hs:
            h.remove()
        t = out["t"][:, kept] if out["t"].shape[1] != out["s"].shape[1] else out["t"]
        return float(((out["s"] - t) ** 2).mean() / t.var())

    held = images(16, seed=1)
    before = {n: channel_error(n, held) for n in ("3", "6", "9")}
    info = reconstruct(pruned, teacher, images(64), outputs=True)
    assert {"3", "6", "9"} <= set(info["layers"]), info
    after = {n: channel_error(n, held) for n in ("3", "6", "9")}
    for n in ("3", "6", "9"):
        assert after[n] < 0.8 * before[n], (n, before, after)


def test_a_layer_whose_inputs_did_not_change_keeps_its_weights():
    teacher = expansion_cnn()
    pruned = copy.deepcopy(teacher)
    example = torch.zeros(1, 3, 16, 16)
    prune_unit(pruned, example, "3", 0.5)  # nothing upstream changed: the expansion's rows are already exact
    w = pruned[3].weight.clone()
    assert "3" not in reconstruct(copy.deepcopy(pruned), teacher, images(64))["kept"]  # by default not tried
    info = reconstruct(pruned, teacher, images(64), outputs=True)
    assert "3" in info["kept"] and "3" not in info["layers"], info
    assert torch.equal(pruned[3].weight, w)
    assert "9" in info["layers"], info


def test_kept_channels_are_found_when_inputs_were_cut_too():
    from kit.compress.reconstruct import kept_channels

    torch.manual_seed(1)
    t = torch.randn(24, 16, 3, 3)
    out, inp = [1, 4, 5, 9, 17, 23], [0, 2, 3, 8, 15]
    s = t[out][:, inp].clone()
    assert kept_channels(s, t) == out
    s[2] += 0.01  # a refitted row matches nothing
    assert kept_channels(s, t) is None
    lin = torch.randn(10, 32)
    assert kept_channels(lin[[0, 3, 7]][:, 5:], lin) == [0, 3, 7]
