"""The dataset registry: name -> info and reader, the data directory, and the train/val/test split.

``DATASETS`` is the single registry; the CLI's choices, help text and "unknown dataset" error all
come from it (through ``data/names.py``, which lists the same names without importing torch).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch.utils.data import Subset

from force_cli.data.readers.cifar import CIFAR10, CIFAR100, cifar_builder
from force_cli.data.readers.digits import build_digits
from force_cli.data.readers.folders import build_imagefolder, build_tiny_imagenet, find_classes
from force_cli.data.readers.mnist import mnist_builder
from force_cli.data.readers.svhn import build_svhn
from force_cli.data.readers.synthetic import build_synthetic
from force_cli.data.names import canonical_name
from force_cli.data.types import DatasetInfo, DatasetSpec, DataSplits
from force_cli.errors import ConfigError, DataError, UnknownNameError

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _info(name, classes, channels, size, mean, std, *, imagenet_style=False, downloadable=False):
    return DatasetInfo(name, classes, channels, size, tuple(mean), tuple(std), imagenet_style, downloadable)


DATASETS: dict[str, DatasetSpec] = {
    spec.info.name: spec
    for spec in [
        DatasetSpec(_info("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                          downloadable=True),
                    "CIFAR-10, 32x32 RGB, 10 classes (binary version, downloaded)", "cifar10",
                    cifar_builder(CIFAR10)),
        DatasetSpec(_info("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                          downloadable=True),
                    "CIFAR-100, 32x32 RGB, 100 fine classes (binary version, downloaded)", "cifar100",
                    cifar_builder(CIFAR100)),
        DatasetSpec(_info("mnist", 10, 1, 28, (0.1307,), (0.3081,), downloadable=True),
                    "MNIST handwritten digits, 28x28 grayscale (downloaded)", "mnist",
                    mnist_builder("MNIST", "MNIST")),
        DatasetSpec(_info("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), downloadable=True),
                    "Fashion-MNIST, 28x28 grayscale (downloaded)", "fashion-mnist",
                    mnist_builder("Fashion-MNIST", "FashionMNIST")),
        DatasetSpec(_info("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                          downloadable=True),
                    "SVHN house numbers, 32x32 RGB (downloaded; needs scipy)", "svhn", build_svhn),
        # imagenet_style=False: the paper trains its CIFAR networks (CIFAR VGG, CIFAR-stem ResNet) on
        # 64x64 Tiny-ImageNet, not the ImageNet ones (VGG-19-bn would have 140 M weights, not 20 M).
        DatasetSpec(_info("tiny-imagenet", 200, 3, 64, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
                    "Tiny-ImageNet, 64x64 RGB, 200 classes (place it in DATA_DIR/tiny-imagenet-200)",
                    "tiny-imagenet-200", build_tiny_imagenet),
        DatasetSpec(_info("imagenet", 1000, 3, 224, _IMAGENET_MEAN, _IMAGENET_STD, imagenet_style=True),
                    "ImageNet ILSVRC-2012 (place it in DATA_DIR/imagenet/{train,val}/<class>/)",
                    "imagenet", build_imagefolder),
        DatasetSpec(_info("imagefolder", 0, 3, 224, _IMAGENET_MEAN, _IMAGENET_STD, imagenet_style=True),
                    "any DATA_DIR/{train,val}/<class>/<image> tree, 224x224 ImageNet-style transforms",
                    "", build_imagefolder),
        DatasetSpec(_info("digits", 10, 1, 8, (0.3053,), (0.3760,)),
                    "scikit-learn's bundled 8x8 handwritten digits (1797 images, no download)", "",
                    build_digits),
        DatasetSpec(_info("synthetic", 10, 3, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
                    "deterministic learnable random 3x32x32 tensors, 10 classes (smoke tests, benchmarks)",
                    "", build_synthetic),
    ]
}


def dataset_names() -> list[str]:
    """Every registered dataset name, sorted."""
    return sorted(DATASETS)


def _spec(name: str) -> DatasetSpec:
    spec = DATASETS.get(canonical_name(name))
    if spec is None:
        raise UnknownNameError("dataset", name, DATASETS)
    return spec


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
    spec = _spec(name)
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
    spec = _spec(name)
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
