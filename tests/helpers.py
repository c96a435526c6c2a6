"""Small shared test fixtures: tiny networks and a fixed batch stream."""

from __future__ import annotations

import torch
from torch import nn


class FixedStream:
    """A stand-in for data.BatchStream: ``take(n)`` cycles through a fixed list of batches."""

    def __init__(self, batches):
        self.batches = list(batches)
        self.position = 0

    def take(self, n):
        out = []
        for _ in range(n):
            out.append(self.batches[self.position % len(self.batches)])
            self.position += 1
        return out


def random_batches(n, batch_size, in_features, classes, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch_size, in_features, generator=g, dtype=dtype),
             torch.randint(0, classes, (batch_size,), generator=g)) for _ in range(n)]


def tiny_mlp(in_features=6, hidden=5, classes=3, seed=0, dtype=torch.float64, bias=True):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(in_features, hidden, bias=bias), nn.Tanh(),
                         nn.Linear(hidden, classes, bias=bias)).to(dtype)


def tiny_convnet(seed=0):
    """Conv + batch norm + linear: exercises BN buffers and 4-d weights."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
    )


def strip_times(history):
    """A training history without its ``*seconds`` entries: the part two equal runs share."""
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in history]


def assert_same_weights(a, b):
    """Trainers ``a`` and ``b`` hold the same model weights and buffers, bit for bit."""
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
