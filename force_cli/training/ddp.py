"""Training under torchrun: the DDP set-up, the agreed stop and each rank's random stream.

``force_cli.distributed`` holds the process group and the collectives that prune and eval share;
this module holds what only training needs.

- **Stepping**: the steps go through DDP (gradients averaged over the ranks during backward, rank
  0's buffers broadcast before each forward); with ``sync_bn`` the batch norms first become
  SyncBatchNorm, whose batch statistics span every rank's batch. torch runs SyncBatchNorm on GPUs
  only (it raises on a CPU tensor once a process group exists), so ``--sync-bn`` under torchrun on
  CPU is refused; in a single process there is nothing to synchronise and it changes nothing.
- **Stopping**: Ctrl-C or SIGTERM may reach one rank only, or the ranks at different steps. Every
  ``every`` steps (every step on CPU; at the sync cadence on CUDA) and at each epoch's end the
  ranks all-reduce (MAX) a one-number stop flag, so they all stop after the same step and the
  partial checkpoint is one consistent state. A plain run reads its own flag after every step.
- **Random streams**: rank r seeds torch's RNG and its loader workers from ``rank_seed(seed, r)``:
  rank 0 from ``seed`` itself (a one-process run is unchanged), the others from streams of their
  own, so the ranks draw different dropout and augmentation for their different images. A partial
  checkpoint holds every rank's RNG state (gathered, written by rank 0; row r is rank r's) and
  rank r resumes from its row, so a partial resumes exactly, and only under the world size that
  wrote it (the data shards depend on it too).
- **Totals** (the ``Trainer``'s): an epoch's running loss and accuracy are summed over the ranks
  for its record and for a partial checkpoint; on resume rank 0 carries the sums, the other ranks
  start from zero, and the epoch's record is the same up to float64 rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from force_cli import distributed
from force_cli.errors import CheckpointError, ConfigError
from force_cli.training.state import StopFlag


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own randomness: ``seed`` on rank 0; for the others a value above
    2**32, so no rank repeats rank 0's stream, nor that of a run with another ``--seed``."""
    return int(seed) if rank == 0 else ((2**32 + int(seed)) * 1_000_003 + int(rank)) & 0x7FFF_FFFF_FFFF_FFFF


def check_sync_bn(device_type: str) -> None:
    """Refuse ``--sync-bn`` under torchrun off the GPU (torch's SyncBatchNorm rejects CPU tensors)."""
    if device_type != "cuda":
        raise ConfigError("--sync-bn needs CUDA: torch's SyncBatchNorm synchronises GPU batches only; "
                          "drop --sync-bn for a run on CPU")


def prepare(model: nn.Module, device: torch.device, *, sync_bn: bool,
            wrap: Callable[[nn.Module], nn.Module] | None = None) -> tuple[nn.Module, nn.Module]:
    """(model, stepper): the model (its batch norms made SyncBatchNorm with ``sync_bn`` under
    torchrun; same parameters and state_dict keys), and the module the training steps go through:
    the model itself in a plain run, DDP around it under torchrun; ``wrap(model)`` instead of the
    model where given (``--compile``: applied after the batch norms are converted, inside DDP)."""
    wrap = wrap or (lambda m: m)
    if not distributed.active():
        return model, wrap(model)
    if sync_bn:
        check_sync_bn(device.type)
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, DistributedDataParallel(wrap(model), device_ids=[device] if device.type == "cuda" else None)


#: Stop reasons as they travel between ranks (the largest number wins): a rank that did not hear
#: the signal itself stops for the same reason, and so exits with the same code.
_REASONS = (None, "stop requested on another rank", "SIGINT", "SIGTERM")


class StopAgreement:
    """Whether to stop now, the same answer on every rank. ``after_step`` is called by every rank
    after every step, ``now`` at the same points on every rank (an epoch's end)."""

    def __init__(self, flag: StopFlag, every: int = 1):
        self.flag, self.every, self._steps = flag, max(1, every), 0

    def after_step(self) -> bool:
        if not distributed.active():
            return self.flag.is_set
        self._steps += 1  # counts steps alike on every rank, so they ask each other at the same ones
        return self._steps % self.every == 0 and self.now()

    def now(self) -> bool:
        """Whether any rank's flag is set; a rank whose own is not takes the agreed reason."""
        if not distributed.active():
            return self.flag.is_set
        reason = self.flag.reason
        code = torch.tensor([0 if reason is None else _REASONS.index(reason) if reason in _REASONS else 1])
        distributed.all_reduce_max_([code])
        agreed = _REASONS[int(code)]
        if agreed is not None and not self.flag.is_set:
            self.flag.set(agreed)
        return agreed is not None


def rng_states(device: torch.device) -> dict[str, Tensor]:
    """torch's RNG states for a partial checkpoint: this process's, or under torchrun every rank's
    stacked in rank order (a collective: every rank calls it)."""
    states = {"rng.cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["rng.cuda"] = torch.cuda.get_rng_state(device)
    if distributed.active():
        states = {name: distributed.all_gather(state) for name, state in states.items()}
    return states


def own_rng_state(state: Tensor | None) -> Tensor | None:
    """This rank's row of the RNG states ``rng_states`` saved (the state itself in a plain run);
    None when there is none, or none for this rank."""
    if state is None or not distributed.active():
        return state
    if state.dim() != 2 or state.shape[0] != distributed.world_size():
        return None
    return state[distributed.rank()].clone()  # a copy: set_rng_state misreads a view's offset


def check_world_size(recorded, path) -> None:
    """Refuse to resume a partial checkpoint under another number of processes than wrote it."""
    if isinstance(recorded, bool) or not isinstance(recorded, int) or recorded < 1:
        raise CheckpointError(f"the partial checkpoint '{path}' records the world size {recorded!r}, not a "
                              "positive integer; the file is corrupt")
    launch = distributed.launch_from_env()
    here = launch.world_size if launch is not None else 1
    if recorded == here:
        return
    how = (f"under torchrun with {recorded} processes in all, e.g. torchrun --nproc-per-node {recorded} "
           f"$(which force) train --resume {path}" if recorded > 1 else f"without torchrun: force train --resume {path}")
    raise ConfigError(f"'{path}' was written by a run of {recorded} process{'es' if recorded > 1 else ''} and this one "
                      f"has {here}; each rank's data shard and random stream depend on that number, so resume it {how}")
