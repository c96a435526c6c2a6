"""``synthetic``: deterministic random CIFAR-shaped tensors, for smoke tests and speed benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch

from force_cli.data.arrays import ArrayDataset, Identity
from force_cli.data.types import DatasetInfo, Parts

SYNTHETIC_TRAIN_SIZE = 1024
SYNTHETIC_TEST_SIZE = 256
_SYNTHETIC_SEED = 20210312  # fixed: independent of any global RNG


class SyntheticDataset(ArrayDataset):
    """Deterministic, learnable random images: sample ``i`` is its class's fixed low-frequency
    pattern plus Gaussian noise, both drawn from generators seeded by (split, i) only.
    Already standardised (about zero mean, unit variance), so no normalisation is applied.
    Made once, in memory (12 KB an image), like the other small datasets."""

    def __init__(self, size: int, split_seed: int, num_classes: int = 10,
                 shape: tuple[int, int, int] = (3, 32, 32)):
        self.size, self.split_seed, self.num_classes, self.shape = size, split_seed, num_classes, shape
        c, h, w = shape
        g = torch.Generator().manual_seed(_SYNTHETIC_SEED)
        coarse = torch.randn(num_classes, c, (h + 3) // 4, (w + 3) // 4, generator=g)
        self.patterns = coarse.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)[:, :, :h, :w].contiguous()
        labels = torch.arange(size, dtype=torch.int64) % num_classes
        images = torch.empty(size, *shape)
        for index in range(size):
            g = torch.Generator().manual_seed(split_seed * 1_000_003 + index)
            images[index] = (self.patterns[labels[index]] + torch.randn(shape, generator=g)) * (0.5 ** 0.5)
        super().__init__(images, labels, Identity())


def build_synthetic(root: Path, info: DatasetInfo, download_missing: bool, augment: bool) -> Parts:
    shape = (info.in_channels, info.image_size, info.image_size)
    train = SyntheticDataset(SYNTHETIC_TRAIN_SIZE, 1, info.num_classes, shape)
    return Parts(train, train, SyntheticDataset(SYNTHETIC_TEST_SIZE, 2, info.num_classes, shape))
