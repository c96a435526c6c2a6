"""Reading a registered dataset: the data directory, its info, and the train/val/test split.

The registry itself, ``DATASETS``, is ``data/catalog.py`` (torch-free, for ``--help``).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch.utils.data import Subset

from force_cli.data.catalog import DATASETS, dataset_names, get_spec
from force_cli.data.readers.folders import find_classes
from force_cli.data.types import DatasetInfo, DatasetSpec, DataSplits
from force_cli.errors import ConfigError, DataError

__all__ = ["DATASETS", "dataset_names", "dataset_info", "default_data_dir", "load_datasets"]


def default_data_dir() -> Path:
    """``$FORCE_DATA`` if set, else ``$XDG_CACHE_HOME/force-cli/data`` (``~/.cache/force-cli/data``)."""
    env = os.environ.get("FORCE_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "force-cli" / "data"


def _dataset_root(spec: DatasetSpec, data_dir: str | Path | None) -> Path:
    base = Path(data_dir).expanduser() if data_dir not in (None, "") else default_data_dir()
    return base / spec.folder if spec.folder else base


def dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """A dataset's shape, classes and normalisation, without decoding any image.

    Only ``imagefolder`` touches the disk: it counts the class folders under ``data_dir/train``.
    """
    spec = get_spec(name)
    if spec.info.name != "imagefolder":
        return spec.info
    root = _dataset_root(spec, data_dir)
    train = root / "train"
    if not train.is_dir():
        raise DataError(
            f"no image folder at {train}; pass --data-dir DIR where DIR/train/<class>/ and "
            f"DIR/val/<class>/ hold the images"
        )
    classes = find_classes(train)
    if not classes:
        raise DataError(f"{train} has no class folders; put each class's images in {train}/<class>/")
    return dataclasses.replace(spec.info, num_classes=len(classes))


def load_datasets(name: str, data_dir: str | Path | None = None, *, download: bool = True,
                  val_fraction: float = 0.0, seed: int = 0, augment: bool = True) -> DataSplits:
    """Build the train / val / test datasets of ``name``.

    ``val_fraction`` of the training set is held out as ``val`` (no augmentation), chosen by a
    permutation seeded with ``seed``; ``train`` and ``train_eval`` keep the other indices.
    Missing data is downloaded into its folder under ``data_dir`` when ``download`` allows.
    """
    spec = get_spec(name)
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"validation fraction must be in [0, 1), got {val_fraction}; use e.g. 0.1")
    info = dataset_info(spec.info.name, data_dir)
    root = _dataset_root(spec, data_dir)
    parts = spec.build(root, info, download, augment)
    n = len(parts.train_plain)
    if val_fraction == 0:
        return DataSplits(info, parts.train_aug, None, parts.test, parts.train_plain)
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise ConfigError(
            f"validation fraction {val_fraction} leaves no training data out of {n} examples; "
            f"use a smaller fraction"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx = order[:n_val].sort().values.tolist()
    train_idx = order[n_val:].sort().values.tolist()
    return DataSplits(
        info=info,
        train=Subset(parts.train_aug, train_idx),
        val=Subset(parts.train_plain, val_idx),
        test=parts.test,
        train_eval=Subset(parts.train_plain, train_idx),
    )
