"""Loaders: a seeded DataLoader for evaluation, batches of in-memory datasets without one (the
training loop's), and the endless seeded batch stream of pruning.

``BatchStream`` keeps its own RNG state, so a stream is reproducible from its seed alone and
never consumes the caller's global RNG.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from force_cli.data.arrays import in_memory
from force_cli.errors import ConfigError, DataError


def _check_loader_args(batch_size: int, workers: int) -> None:
    if int(batch_size) < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if int(workers) < 0:
        raise ConfigError(f"the number of data-loading workers must be >= 0, got {workers}")


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, workers: int = 0,
                drop_last: bool = False, device: torch.device | str | None = None) -> DataLoader:
    """A DataLoader whose shuffling (and worker seeding) comes from a generator seeded by ``seed``.

    Memory is pinned only for a CUDA ``device``. Workers persist across epochs.
    """
    _check_loader_args(batch_size, workers)
    pin = device is not None and torch.device(device).type == "cuda"
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, drop_last=drop_last,
        pin_memory=pin, generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0,
    )


def tensor_batches(dataset: Dataset, order: Iterable[int], batch_size: int) -> Iterator[tuple[Tensor, Tensor]] | None:
    """The batches of an in-memory dataset (or a Subset of one) in ``order``, each made by a
    few whole-batch tensor operations on the device its images are on; None for any other dataset.

    No DataLoader: nothing to collate, pin or send through workers. The batches, and torch's RNG
    after each, are those of a DataLoader without workers, bit for bit; each batch is made
    when it is asked for, as a DataLoader would.
    """
    found = in_memory(dataset)
    if found is None:
        return None
    base, subset = found
    index = torch.as_tensor(list(order), dtype=torch.int64)
    if subset is not None:
        index = torch.as_tensor(subset, dtype=torch.int64)[index]
    return (base.batch(chunk) for chunk in index.split(batch_size) if len(chunk))  # none from no indices


class _EndlessPermutation(Sampler[int]):
    """Indices forever: a fresh permutation of range(n) per epoch, from one seeded generator."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            yield from torch.randperm(self.n, generator=generator).tolist()


class BatchStream:
    """Endless seeded shuffled stream of (x, y) batches from a dataset: one persistent iterator,
    a new seeded permutation each epoch — never re-creates an iterator per batch.

    Batches are always full: a batch that crosses an epoch boundary takes the rest of one
    permutation and the start of the next. With ``workers == 0`` the augmentation randomness comes
    from the stream's own RNG state, so the stream depends on ``seed`` only and leaves torch's
    global RNG untouched; with workers, each worker is seeded from the stream's generator.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, workers: int = 0):
        _check_loader_args(batch_size, workers)
        if len(dataset) == 0:
            raise DataError("the dataset to draw batches from is empty; check the data folder")
        self._workers = workers
        self._loader = DataLoader(
            dataset, batch_size=batch_size, sampler=_EndlessPermutation(len(dataset), seed),
            num_workers=workers, generator=torch.Generator().manual_seed(seed),
        )
        self._iterator = None
        rng = torch.Generator().manual_seed(seed + 0x5EED)
        self._rng_state = rng.get_state()

    def next(self) -> tuple[Tensor, Tensor]:
        if self._workers:
            if self._iterator is None:
                self._iterator = iter(self._loader)
            return next(self._iterator)
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._rng_state)
            if self._iterator is None:
                self._iterator = iter(self._loader)
            batch = next(self._iterator)
            self._rng_state = torch.get_rng_state()
        return batch

    __next__ = next

    def __iter__(self) -> BatchStream:
        return self

    def take(self, n: int) -> list[tuple[Tensor, Tensor]]:
        return [self.next() for _ in range(n)]
