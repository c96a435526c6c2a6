"""The dataset registry's names and the splits of a dataset, importable without torch.

``force --help`` and the "unknown dataset" error need only names; importing the registry itself
(``data/registry.py``) loads torch, which takes seconds. ``DATASET_NAMES`` must list exactly the
registry's names, in its order: ``tests/test_startup.py`` compares it with ``DATASETS``.
"""

from __future__ import annotations

#: ``DATASETS``' names (data/registry.py), in registry order.
DATASET_NAMES: tuple[str, ...] = (
    "cifar10", "cifar100", "mnist", "fashion-mnist", "svhn", "tiny-imagenet", "imagenet", "imagefolder",
    "digits", "synthetic",
)

#: The parts of a dataset a checkpoint can be evaluated on (``force eval --split``); ``val`` is the
#: part of the training set held out during training.
SPLITS: tuple[str, ...] = ("test", "val", "train")


def canonical_name(name) -> str:
    """A dataset name as the registry spells it: ``CIFAR10`` and ``fashion_mnist`` are accepted."""
    return str(name).strip().lower().replace("_", "-")
