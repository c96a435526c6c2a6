"""The data structures of the dataset factory: what a dataset is, what a reader returns, what a
run gets. No behaviour here, so every other module of ``data`` can import it; torch-free, so that
the catalog of datasets (``data/catalog.py``) is too."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from force_cli.lazy import resolve

if TYPE_CHECKING:
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
class TrainDefaults:
    """A dataset's training defaults: what `force train` uses where no flag or recipe chooses.

    Every field is required, so a dataset cannot be registered without them (no silent fallback to
    another dataset's 350 epochs). ``val_fraction`` is also the part of the training set that
    pruning never draws its batches from (``data/holdout.py``)."""

    epochs: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    lr_schedule: str
    milestones: tuple[int, ...]
    gamma: float
    batch_size: int
    val_fraction: float

    def but(self, **changes: Any) -> TrainDefaults:
        """These defaults with some changed (``milestones`` may be given as a list)."""
        if "milestones" in changes:
            changes["milestones"] = tuple(changes["milestones"])
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """The fields as ``TrainSettings`` keyword arguments (``milestones`` as a list)."""
        return dataclasses.asdict(self) | {"milestones": list(self.milestones)}


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry. ``folder`` is the dataset's folder under the data directory; ``reader``
    names the builder ``module:function`` under ``force_cli.data`` (imported when a dataset is
    built, so that the catalog loads without torch); ``train`` its training defaults."""

    info: DatasetInfo
    summary: str
    folder: str
    reader: str  # e.g. "readers.cifar:build_cifar10"; the function takes (root, info, download, augment)
    train: TrainDefaults

    def build(self, root: Path, info: DatasetInfo, download: bool, augment: bool) -> Parts:
        return resolve("force_cli.data", self.reader)(root, info, download, augment)
