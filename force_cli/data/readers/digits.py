"""``digits``: scikit-learn's bundled 8x8 handwritten digits, read and split without importing it."""

from __future__ import annotations

import gzip
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

from force_cli.data.arrays import ArrayDataset, Identity
from force_cli.data.download import FILE_ERRORS, one_line
from force_cli.data.types import DatasetInfo, Parts
from force_cli.errors import DataError

_DIGITS_SPLIT_SEED = 0  # fixed: the digits test set is the same for every run


def build_digits(root: Path, info: DatasetInfo, download_missing: bool, augment: bool) -> Parts:
    x, y = read_digits()
    train_idx, test_idx = stratified_split(y, test_fraction=0.2, seed=_DIGITS_SPLIT_SEED)
    x_train, x_test, y_train, y_test = x[train_idx], x[test_idx], y[train_idx], y[test_idx]

    def tensors(images: np.ndarray, labels: np.ndarray) -> ArrayDataset:  # normalised once, here
        pixels = torch.as_tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        pixels = (pixels - info.mean[0]) / info.std[0]
        return ArrayDataset(pixels, torch.as_tensor(labels, dtype=torch.int64), Identity())

    train = tensors(x_train, y_train)
    return Parts(train, train, tensors(x_test, y_test))


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits file, read without importing scikit-learn (1.2 s of imports
    with scipy, a third of a small `force prune`): what ``load_digits(return_X_y=True)`` returns."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits dataset needs scikit-learn; pip install scikit-learn")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",")
    except FILE_ERRORS as err:
        raise DataError(f"cannot read scikit-learn's digits file {path} ({one_line(err)}); reinstall scikit-learn") from None
    return table[:, :-1], table[:, -1].astype(int)


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (train, test) indices of scikit-learn's ``train_test_split(stratify=y, random_state=seed)``.

    The same algorithm as its StratifiedShuffleSplit and the same legacy NumPy RNG, so the split
    is identical (a test checks it against scikit-learn) without importing scikit-learn.
    """
    rng = np.random.RandomState(seed)
    n_test = math.ceil(test_fraction * len(y))
    n_train = len(y) - n_test
    _, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train, test = [], []
    for i in range(len(class_counts)):
        permuted = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(permuted[: n_i[i]])
        test.extend(permuted[n_i[i]: n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's approximate mode of the multivariate hypergeometric (ties drawn from ``rng``)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)
