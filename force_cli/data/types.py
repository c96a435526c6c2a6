"""The data structures of the dataset factory: what a dataset is, what a reader returns, what a
run gets. No behaviour here, so every other module of ``data`` can import it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from torch.utils.data import Dataset


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, available without decoding any image."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    imagenet_style: bool  # True: the model registry builds torchvision's ImageNet architectures (ImageNet, imagefolder)
    downloadable: bool


@dataclass
class DataSplits:
    """The datasets of one run. ``train`` and ``train_eval`` hold the same indices."""

    info: DatasetInfo
    train: Dataset  # with training augmentation (unless augment=False)
    val: Dataset | None  # held out of the training set, no augmentation; None if val_fraction == 0
    test: Dataset  # no augmentation
    train_eval: Dataset  # the training indices without augmentation (``eval --split train``)


class Parts(NamedTuple):
    """What a dataset builder returns: full training set twice (augmented / plain, same order)."""

    train_aug: Dataset
    train_plain: Dataset
    test: Dataset


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry. ``folder`` is the dataset's folder under the data directory."""

    info: DatasetInfo
    summary: str
    folder: str
    build: Callable[[Path, DatasetInfo, bool, bool], Parts]  # (root, info, download, augment)
