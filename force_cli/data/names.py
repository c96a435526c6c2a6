"""How a dataset is named and split, importable without torch and without the registry.

The registry's names themselves are ``data/catalog.py``'s ``DATASET_NAMES`` (torch-free too).
"""

from __future__ import annotations

#: The parts of a dataset a checkpoint can be evaluated on (``force eval --split``); ``val`` is the
#: part of the training set held out during training.
SPLITS: tuple[str, ...] = ("test", "val", "train")


def canonical_name(name) -> str:
    """A dataset name as the registry spells it: ``CIFAR10`` and ``fashion_mnist`` are accepted."""
    return str(name).strip().lower().replace("_", "-")
