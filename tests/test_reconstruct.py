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
