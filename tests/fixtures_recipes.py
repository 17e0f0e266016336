"""Fixtures for recipe and search tests: a small CNN trained on digits16 (accurate enough that an
accuracy budget means something), a private build cache and a private results store."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head: ~90% on digits16 after a few epochs, every op exportable."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


@pytest.fixture(scope="session")
def recipe_model(digits16):
    from kit.compress import TrainConfig, train

    torch.manual_seed(0)
    return train(SmallCNN(), digits16.train, TrainConfig(epochs=4, lr=1e-2, seed=0))


@pytest.fixture(scope="session")
def recipe_model_file(recipe_model, tmp_path_factory):
    """The trained model as a checkpoint file, the way a user hands it to `edgekit search`."""
    path = tmp_path_factory.mktemp("recipe-model") / "digits-cnn.pt"
    torch.save(recipe_model, path)
    return path


@pytest.fixture
def private_build_cache(tmp_path_factory, monkeypatch):
    # kit.cache writes under ~/.config unless told otherwise; tests keep theirs to the session.
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path_factory.getbasetemp() / "edgekit-cache"))
