"""In-memory datasets: all images of a split in one uint8 tensor, transformed batch by batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from force_cli.data.types import Parts
from force_cli.errors import DataError


class ArrayDataset(Dataset):
    """uint8 images (N, C, H, W) + int labels, with a transform; no copy of the arrays.

    ``__getitems__`` (which DataLoader and Subset call for a whole batch) transforms the batch
    with tensor operations: about N times fewer Python steps than one image at a time, and the
    same tensors bit for bit, since the random draws are made in the same order.
    """

    def __init__(self, images: Tensor, labels: Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        images = self.transform.batch(self.images[index])
        return list(zip(images.unbind(0), self.labels[index].tolist()))


def array_parts(images: np.ndarray, labels: np.ndarray, test_images: np.ndarray,
                test_labels: np.ndarray, train_tf, test_tf) -> Parts:
    def tensor(array: np.ndarray) -> Tensor:  # contiguous, writable (idx arrays are read-only views)
        return torch.from_numpy(np.require(array, requirements=["C", "W"]))

    x, y = tensor(images), torch.from_numpy(labels.astype(np.int64))
    tx = tensor(test_images)
    ty = torch.from_numpy(test_labels.astype(np.int64))
    plain = ArrayDataset(x, y, test_tf)
    aug = plain if train_tf is test_tf else ArrayDataset(x, y, train_tf)
    return Parts(aug, plain, ArrayDataset(tx, ty, test_tf))


def check_labels(labels: np.ndarray, num_classes: int, where: Path, title: str) -> None:
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(
            f"{where} has label {int(labels.max())}, but {title} has {num_classes} classes; "
            f"the files are corrupt or of another dataset, delete them and download {title} again"
        )
