"""The validation split: the part of the training set that `train` holds out and `prune` never draws
its batches from, decided here once for pruning, training and evaluation.

``load_datasets(val_fraction=F, seed=S)`` makes the split; with the same F and S pruning and
training hold out the same images. Pruning records its F in the checkpoint (``pruning.val_fraction``),
training starts from it and records its own (``training.val_fraction``); where nothing is
recorded, the dataset's default (``DatasetSpec.train.val_fraction``) applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from force_cli.data.catalog import train_defaults


def default_fraction(dataset: str, chosen: float | None = None) -> float:
    """``chosen`` if given, else the fraction `train` holds out of ``dataset`` by default."""
    return float(chosen) if chosen is not None else train_defaults(dataset).val_fraction


def _block_value(metadata: Mapping[str, Any], block: str) -> Any:
    section = metadata.get(block)
    return section.get("val_fraction") if isinstance(section, dict) else None


def is_fraction(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


def pruned_fraction(metadata: Mapping[str, Any]) -> float | None:
    """The fraction pruning kept its batches out of, as recorded in a checkpoint (None: none, or
    not a fraction). A fresh training run holds out the same by default, so that with the same seed
    (also the default) it validates on exactly the images pruning never saw."""
    value = _block_value(metadata, "pruning")
    return float(value) if is_fraction(value) else None


def checkpoint_fraction(metadata: Mapping[str, Any], dataset: str) -> Any:
    """The fraction of a checkpoint's validation split: its training run's as recorded (unchecked:
    the caller refuses a corrupt value), else pruning's, else ``dataset``'s default."""
    trained = _block_value(metadata, "training")
    if trained is not None:
        return trained
    pruned = pruned_fraction(metadata)
    return pruned if pruned is not None else default_fraction(dataset)


def mismatch(metadata: Mapping[str, Any], val_fraction: float, seed: int) -> list[str]:
    """A warning when a training run's validation split is not the one pruning kept its batches out of."""
    held = pruned_fraction(metadata)
    pruned_seed = metadata.get("seed")
    if held is None or not val_fraction or (held == val_fraction and pruned_seed == seed):
        return []
    return [f"the validation split (fraction {val_fraction:g}, seed {seed}) is not the one pruning held out "
            f"(fraction {held:g}, seed {pruned_seed}), so pruning may have seen some validation images; "
            f"keep the defaults, or prune with the same --val-fraction and --seed"]
