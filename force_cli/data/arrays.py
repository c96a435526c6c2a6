"""In-memory datasets: all images of a split in one tensor, transformed batch by batch.

CIFAR-10/100, MNIST, Fashion-MNIST and SVHN keep uint8 images (normalised per batch), digits and
synthetic float32 images that are ready to use. The tensor may live on the training device
(``to_device``): the batch is then cropped, flipped and normalised there, with the random draws
still made on the CPU in the per-sample order, so the batches are the same on every device and a
run resumes from the CPU RNG state alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from force_cli.data.types import Parts
from force_cli.errors import DataError


class Identity:
    """The transform of images stored ready to use (digits, synthetic)."""

    def __call__(self, x: Tensor) -> Tensor:
        return x

    def batch(self, x: Tensor) -> Tensor:
        return x


class ArrayDataset(Dataset):
    """Images (N, C, H, W) + int64 labels in two tensors, with a transform; no copy of the arrays.

    ``batch`` transforms a whole batch with tensor operations on the images' device: about N
    times fewer Python steps than one image at a time, and the same tensors bit for bit, since
    the random draws are made in the same order. ``__getitems__`` (which DataLoader and Subset
    call for a whole batch) goes through it too.
    """

    def __init__(self, images: Tensor, labels: Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), int(self.labels[index])

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """(images, labels) of the int64 ``index``, transformed, on the images' device."""
        index = index.to(self.images.device)
        return self.transform.batch(self.images[index]), self.labels[index]

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        images, labels = self.batch(torch.as_tensor(indices, dtype=torch.int64))
        return list(zip(images.unbind(0), labels.tolist()))

    def to(self, device: torch.device | str) -> ArrayDataset:
        """The same dataset with its tensors on ``device`` (one copy; none if they are there)."""
        return ArrayDataset(self.images.to(device), self.labels.to(device), self.transform)


def in_memory(dataset: Dataset) -> tuple[ArrayDataset, list[int] | None] | None:
    """(the ArrayDataset under ``dataset``, the indices a Subset takes of it, or None), or None
    for a dataset that is not held in memory."""
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, ArrayDataset):
        return dataset.dataset, list(dataset.indices)
    if isinstance(dataset, ArrayDataset):
        return dataset, None
    return None


def to_device(dataset: Dataset, device: torch.device | str, moved: dict | None = None) -> Dataset:
    """``dataset`` with its in-memory images on ``device`` (a Subset keeps its indices); any
    other dataset unchanged. ``moved``, one dict shared by the splits of one run, remembers each
    tensor already moved: the training and validation parts of a training set hold the same
    images, and so keep one copy on the device, not two."""
    found = in_memory(dataset)
    if found is None:
        return dataset
    base, indices = found
    if moved is None:
        moved = {}
    for tensor in (base.images, base.labels):
        if id(tensor) not in moved:
            moved[id(tensor)] = tensor.to(device)
    on_device = ArrayDataset(moved[id(base.images)], moved[id(base.labels)], base.transform)
    return on_device if indices is None else Subset(on_device, indices)


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
