"""Shared fixtures. Fixture modules named tests/fixtures_*.py are loaded as plugins, so each
area keeps its own fixtures in its own file (sshd devices, keys, ...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest_plugins = sorted(f"tests.{p.stem}" for p in Path(__file__).parent.glob("fixtures_*.py"))


class TinyNet(torch.nn.Module):
    """Two strided convs + linear for 16x16 inputs: quick to train (~90% top-1 on digits16 in two
    epochs), quick to export, every op XNNPACK delegates."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(in_channels, 8, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(scope="session")
def digits16():
    """The bundled digits at 16x16: real data, small enough for quick tests."""
    from kit.data import load_digits

    return load_digits(image_size=16, seed=0)


@pytest.fixture(scope="session")
def tiny_model(digits16):
    """TinyNet trained for two epochs on digits16 (a trained model: real weights quantize differently)."""
    from kit.compress import TrainConfig, train

    torch.manual_seed(0)
    return train(TinyNet(), digits16.train, TrainConfig(epochs=2, seed=0))


@pytest.fixture(scope="session")
def bundles_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bundles")


@pytest.fixture(scope="session")
def pte_bundle(tiny_model, digits16, bundles_dir, edgekit_signing_key):  # signed with the session key
    from kit.package import package

    return package(tiny_model, "executorch", bundles_dir / "tiny-pte", digits16.test.x[:1], name="tiny")


@pytest.fixture(scope="session")
def onnx_bundle(tiny_model, digits16, bundles_dir, edgekit_signing_key):  # signed with the session key
    from kit.package import package

    return package(tiny_model, "onnx", bundles_dir / "tiny-onnx", digits16.test.x[:1], name="tiny")


@pytest.fixture
def rng():
    return np.random.default_rng(0)
