"""The order of the training samples: a pure function of (seed, epoch), sharded by rank under
torchrun, so that resuming needs no loader state."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from force_cli.data.loaders import tensor_batches
from force_cli.training.ddp import rank_seed


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s shuffle (and of its loader workers)."""
    return (int(seed) * 1_000_003 + int(epoch)) & 0x7FFF_FFFF_FFFF_FFFF


def shard_size(n: int, world_size: int) -> int:
    """Samples each rank sees per epoch: ``ceil(n / world_size)`` (DistributedSampler's)."""
    return -(-n // world_size)


class EpochSampler(Sampler[int]):
    """A permutation of ``range(n)`` seeded by ``(seed, epoch)``, starting at position ``start``.

    Under torchrun (``world_size`` > 1) rank ``rank`` takes every ``world_size``-th index of that
    same global permutation, padded by wrapping around to a multiple of ``world_size`` as
    torch's DistributedSampler does; so step k of all ranks together covers exactly the k-th
    batch of ``world_size * batch_size`` of a single-process run (the last one up to the padding).
    """

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0, *, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=generator)
        if self.world_size > 1:
            padded = shard_size(self.n, self.world_size) * self.world_size
            order = torch.cat([order, order[: padded - self.n]])[self.rank::self.world_size]
        return iter(order[self.start:].tolist())

    def __len__(self) -> int:
        return max(0, shard_size(self.n, self.world_size) - self.start)


def _leave_signals_to_main(worker_id: int) -> None:
    """Loader workers leave Ctrl-C and SIGTERM to the main process, which finishes its step, saves
    the progress and stops them. (torchrun and SLURM signal a rank's whole process group; a rank
    whose workers died mid-step could not finish the step its peers are in.) A worker still ends
    on its own when the main process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _loader(dataset: Dataset, batch_size: int, *, workers: int, device: torch.device | None,
            generator: torch.Generator, sampler: Sampler | None = None) -> DataLoader:
    """A loader whose worker seeds come from ``generator``, never from torch's global RNG."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
        pin_memory=device is not None and device.type == "cuda", generator=generator,
        worker_init_fn=_leave_signals_to_main if workers else None,
    )


def epoch_batches(dataset: Dataset, batch_size: int, seed: int, epoch: int, *, skip: int = 0,
                  workers: int = 0, device: torch.device | None = None, rank: int = 0,
                  world_size: int = 1) -> Iterator:
    """The batches of epoch ``epoch`` (1-based), without the first ``skip`` batches.

    Without workers the skipped samples are never loaded (their augmentation randomness is in
    the restored RNG state); with workers they are loaded and dropped, so every worker draws the
    same augmentation as in an uninterrupted epoch. Without workers an in-memory dataset is
    batched by ``tensor_batches`` on the device its images are on (the same batches as through a
    DataLoader); that is the only way for images on an accelerator, which workers cannot share.
    Under torchrun the order is the same on every rank; the workers' seeds are the rank's own
    (``ddp.rank_seed``).
    """
    start = skip * batch_size if workers == 0 else 0
    sampler = EpochSampler(len(dataset), seed, epoch, start, rank=rank, world_size=world_size)
    batches = tensor_batches(dataset, sampler, batch_size) if workers == 0 else None
    if batches is not None:
        return batches
    loader = _loader(dataset, batch_size, workers=workers, device=device, sampler=sampler,
                     generator=torch.Generator().manual_seed(epoch_seed(rank_seed(seed, rank), epoch)))
    iterator = iter(loader)
    if workers:
        for _ in range(skip):
            next(iterator)
    return iterator
