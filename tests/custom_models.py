"""Models outside the registry, named by import path in tests (``tests.custom_models:NAME``)."""

from __future__ import annotations

from torch import nn


def tiny_mlp(num_classes: int, in_channels: int, image_size: int, hidden: int = 32) -> nn.Module:
    """A two-layer perceptron for any image shape (the CLI passes the dataset's)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def dropout_mlp(num_classes: int, in_channels: int, image_size: int, hidden: int = 64) -> nn.Module:
    """A perceptron with dropout: every training step draws from torch's RNG, so a run resumes
    exactly only if each process gets its own random stream back."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU(),
                         nn.Dropout(0.3), nn.Linear(hidden, num_classes))


def small_convnet(num_classes):
    """Takes only num_classes: the CLI passes only the arguments a factory accepts."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, num_classes))


def not_a_module(num_classes: int):
    return [num_classes]


def fixed_outputs():
    """Ignores the dataset's class count: 1000 outputs."""
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(1000))


NOT_CALLABLE = 3


def gelu_mlp(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A GELU, which `force shrink` does not know: it must refuse, naming the layer ('2')."""
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 16), nn.GELU(),
                         nn.Linear(16, num_classes))
