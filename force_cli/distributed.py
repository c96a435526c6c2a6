"""Running under torchrun: the process group, which rank writes, and the collectives force needs.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in every process it starts; ``session`` turns them
into a process group (NCCL on CUDA, gloo on CPU; one device per local rank) and tears it down
afterwards. Without them (or with WORLD_SIZE=1) nothing is initialised and every helper here is a
no-op, so a single-process run is exactly what it was. torch.distributed itself holds the group;
this module remembers only whether a gloo group was ever held (``exit_after_group``).

Ending a process that held a gloo group: torch's DDP keeps the group alive after
``destroy_process_group`` (its gradient reducer holds it; pytorch/pytorch#107298), so the group's
worker threads outlive the session (measured: the threads of a gloo group that a ``Reducer`` was
built on stay after it). A worker may still be dropping the last collective's tensor
when the interpreter shuts down; that needs the GIL, which a finalizing interpreter refuses by
ending the thread, and the C++ runtime then aborts the whole process ("terminate called without
an active exception", SIGABRT) although every file was written; under load, about one launch in
ten of two ranks that train a step, all-reduce and exit did so here. ``exit_after_group`` therefore
ends such a process with ``os._exit`` once its output is flushed, skipping that teardown.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from force_cli.errors import ConfigError


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a torchrun launch."""

    rank: int
    world_size: int
    local_rank: int


def launch_from_env() -> Launch | None:
    """The torchrun launch this process is part of, or None for a plain (single-process) run."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        launch = Launch(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                        int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))
    except ValueError:
        raise ConfigError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if launch.world_size < 1 or not 0 <= launch.rank < launch.world_size:
        raise ConfigError(f"RANK {launch.rank} is outside WORLD_SIZE {launch.world_size}")
    return launch if launch.world_size > 1 else None


def active() -> bool:
    """True inside a multi-process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes files and prints results (rank 0, or a plain run). Before the
    group exists, torchrun's RANK decides, so the CLI can silence other ranks from the start."""
    if active():
        return dist.get_rank() == 0
    launch = launch_from_env()
    return launch is None or launch.rank == 0


def barrier() -> None:
    if active():
        dist.barrier()


def _all_reduce_(tensors: Sequence[torch.Tensor], op) -> None:
    device = _collective_device()
    for t in tensors:
        moved = t if t.device == device else t.to(device)
        dist.all_reduce(moved, op=op)
        if moved is not t:
            t.copy_(moved)


def all_reduce_sum_(tensors: Sequence[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place (on any device: NCCL reduces on the GPU)."""
    if active():
        _all_reduce_(tensors, dist.ReduceOp.SUM)


def all_reduce_max_(tensors: Sequence[torch.Tensor]) -> None:
    """The largest value of each element over the ranks, in place."""
    if active():
        _all_reduce_(tensors, dist.ReduceOp.MAX)


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (same shape and dtype on all), stacked in rank order on the CPU;
    a plain run gets ``tensor[None]``."""
    if not active():
        return tensor.detach().cpu()[None]
    device = _collective_device()
    mine = tensor.detach().to(device)
    parts = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, mine)
    return torch.stack(parts).cpu()


def all_reduce_mean_(tensors: Sequence[torch.Tensor]) -> None:
    """Average each tensor over the ranks, in place (gloo has no AVG: sum, then divide)."""
    if active():
        _all_reduce_(tensors, dist.ReduceOp.SUM)
        size = dist.get_world_size()
        for t in tensors:
            t.div_(size)


def all_reduce_weighted_mean_(tensors: Sequence[torch.Tensor], weight: int) -> None:
    """Replace each rank's mean (over ``weight`` items) by the mean over all ranks' items, in place:
    exact however the items are split between ranks."""
    if active():
        total = torch.tensor([float(weight)], dtype=torch.float64)
        _all_reduce_([total], dist.ReduceOp.SUM)
        for t in tensors:
            t.mul_(weight)
        _all_reduce_(tensors, dist.ReduceOp.SUM)
        for t in tensors:
            t.div_(float(total))


def check_identical(tensors: Sequence[torch.Tensor], what: str) -> None:
    """Raise unless every rank holds the same ``tensors`` (compared by a float64 checksum pair)."""
    if not active():
        return
    total = torch.zeros(2, dtype=torch.float64)
    for i, t in enumerate(tensors):
        flat = t.detach().reshape(-1).to("cpu", torch.float64)
        total[0] += flat.sum()
        total[1] += (flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64).mul_(1.0 + i * 1e-3)).sum()
    low, high = total.clone(), total.clone()
    _all_reduce_([low], dist.ReduceOp.MIN)
    _all_reduce_([high], dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise RuntimeError(f"the ranks hold different {what} (checksums differ); every rank must agree")


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def device_for(launch: Launch, spec: str) -> str:
    """The device spec of this rank: cuda:LOCAL_RANK when the run is on CUDA, else the spec."""
    spec = (spec or "auto").strip().lower()
    cuda = spec.startswith("cuda") or (spec == "auto" and torch.cuda.is_available())
    return f"cuda:{launch.local_rank}" if cuda else spec


#: Whether this process has held a gloo group (its threads may outlive the session: module docstring).
_held_gloo_group = False


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[str]:
    """Inside a torchrun launch, hold a process group for the block and yield this rank's device
    spec; otherwise yield ``device`` unchanged and initialise nothing."""
    launch = launch_from_env()
    if launch is None or active():
        yield device
        return
    spec = device_for(launch, device)
    backend = "nccl" if spec.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(spec.split(":")[1]))
    dist.init_process_group(backend=backend, rank=launch.rank, world_size=launch.world_size)
    global _held_gloo_group
    _held_gloo_group = _held_gloo_group or backend == "gloo"
    try:
        yield spec
    finally:
        dist.destroy_process_group()


def exit_after_group(code: object) -> None:
    """End the process with exit status ``code`` (as ``sys.exit`` reads it) without the
    interpreter's teardown if it ever held a gloo group; otherwise return and let the caller exit
    as usual. stdout and stderr are flushed first; files are the commands' to close before."""
    if not _held_gloo_group:
        return
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): the message goes to stderr and the status is 1
        sys.stderr.write(f"{code}\n")
        status = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: nothing more can reach it
            pass
    os._exit(status)
