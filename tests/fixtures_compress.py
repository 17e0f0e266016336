"""Fixtures for the compression tests: a small trained CNN on digits16 (real trained weights:
they quantize and prune differently from random ones) and a MobileNetV2 student graph."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def cnn16(digits16):
    """kit.models.TeacherCNN (width 16) trained 3 epochs on digits16: ~94% top-1, conv+BN+ReLU+pool+linear."""
    from kit.compress import TrainConfig, train
    from kit.models import TeacherCNN

    torch.manual_seed(0)
    return train(TeacherCNN(in_channels=1, num_classes=10, width=16), digits16.train, TrainConfig(epochs=3, seed=0))


@pytest.fixture(scope="session")
def cnn16_top1(cnn16, digits16):
    from kit.evaluate import accuracy, torch_predictor

    return accuracy(torch_predictor(cnn16), digits16.test)


@pytest.fixture
def mobilenet16():
    """A torchvision MobileNetV2 (width 0.35, stride-1 stem) for 1x16x16 inputs: inverted residuals,
    depthwise convs and residual adds, the graph structured pruning must keep consistent."""
    from kit.models import mobilenet_student

    torch.manual_seed(0)
    return mobilenet_student("mobilenet_v2", width_mult=0.35, num_classes=10, in_channels=1, stem_stride=1).eval()
