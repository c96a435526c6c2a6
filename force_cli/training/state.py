"""What a partial checkpoint needs besides the weights, and the checks it passes before use: the
optimizer state as tensors plus JSON (never pickle), the epoch's running totals, torch's RNG state;
and the flag that Ctrl-C or SIGTERM sets to stop training between two steps.

A partial checkpoint is a file like any other: every field is checked (types, ranges, tensor shapes
and dtypes) before the trainer uses it, and any mismatch is a one-line CheckpointError.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from force_cli.errors import CheckpointError

_TENSOR_REF = "tensor"


@dataclass
class EpochTotals:
    """Running sums of the current epoch (kept in partial checkpoints, so a resumed epoch reports
    the same loss and accuracy as an uninterrupted one)."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    batches: int = 0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.seen if self.seen else float("nan")

    @property
    def acc(self) -> float:
        return self.correct / self.seen if self.seen else float("nan")


@dataclass
class Progress:
    """Where a partial checkpoint's run stands, checked: epochs done, the running totals of the
    epoch in progress (summed over the ranks), the time spent in it, the finished epochs' records."""

    epoch: int
    totals: EpochTotals
    epoch_seconds: float
    history: list[dict]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def corrupt(what: str) -> CheckpointError:
    return CheckpointError(f"the partial checkpoint's {what}; the file is corrupt, resume from an "
                           "earlier partial checkpoint or start again from the pruned one")


def check_progress(structure: Any, history: Any, *, epochs: int, batches_per_epoch: int) -> Progress:
    """The epoch, totals, time and history of a ``Trainer.state()`` structure, or a CheckpointError."""
    if not isinstance(structure, Mapping):
        raise corrupt("training state is not a mapping")
    epoch = structure.get("epoch")
    if not _is_int(epoch) or not 0 <= epoch <= epochs + 100_000:
        raise corrupt(f"epoch {epoch!r} is not a non-negative integer")
    totals = structure.get("totals")
    if not isinstance(totals, Mapping) or set(totals) != {f.name for f in fields(EpochTotals)}:
        raise corrupt("running totals are malformed")
    if not all(_is_int(totals[k]) and totals[k] >= 0 for k in ("correct", "seen", "batches")) or not (
            isinstance(totals["loss_sum"], (int, float)) and not isinstance(totals["loss_sum"], bool)
            and math.isfinite(totals["loss_sum"])):
        raise corrupt("running totals are not non-negative numbers")
    if totals["batches"] >= batches_per_epoch or totals["correct"] > totals["seen"]:
        raise corrupt(f"batch index {totals['batches']} is outside the epoch's {batches_per_epoch} batches")
    seconds = structure.get("epoch_seconds", 0.0)
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        raise corrupt("epoch time is not a number")
    if not isinstance(history, list) or not all(isinstance(r, Mapping) for r in history):
        raise corrupt("history is not a list of epoch records")
    if len(history) < epoch or any(not _is_int(r.get("epoch")) for r in history[:epoch]):
        raise corrupt(f"history has {len(history)} epoch records for {epoch} finished epochs")
    return Progress(epoch, EpochTotals(**totals), float(seconds), [dict(r) for r in history][:epoch])


def checked_optimizer_state(structure: Any, tensors: Mapping[str, Tensor], optimizer: torch.optim.Optimizer,
                            params: list[Tensor]) -> dict:
    """The optimizer state saved in ``structure`` (a ``Trainer.state()``) as a dict for
    ``optimizer.load_state_dict``, checked against the model's ``params``; its hyper-parameters are
    the current ones (``optimizer``'s), so no saved value of the wrong type is used: only the
    parameter indices and the state come from the file."""
    try:
        sd = optimizer_state_from_tensors(structure["optimizer"], tensors)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise corrupt(f"optimizer state is malformed ({type(exc).__name__})") from None
    groups = sd["param_groups"]
    current = optimizer.state_dict()["param_groups"]
    if len(groups) != len(current) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                              for g in groups) or \
            sorted(i for g in groups for i in g["params"]) != list(range(len(params))):
        raise corrupt("optimizer state does not fit the model")
    sd["param_groups"] = [{k: v for k, v in mine.items() if k != "params"} | {"params": saved["params"]}
                          for mine, saved in zip(current, groups)]
    for index, entry in sd["state"].items():
        if not 0 <= index < len(params) or not isinstance(entry, dict):
            raise corrupt("optimizer state names a parameter the model does not have")
        for key, value in entry.items():
            if torch.is_tensor(value) and value.dim() > 0 and (
                    value.shape != params[index].shape or not value.dtype.is_floating_point):
                raise corrupt(f"optimizer state '{key}' of parameter {index} has shape {tuple(value.shape)} "
                              f"and dtype {value.dtype}, the parameter {tuple(params[index].shape)}")
            if torch.is_tensor(value) and value.dim() == 0 and value.numel() != 1:
                raise corrupt(f"optimizer state '{key}' of parameter {index} is malformed")
    return sd


def check_rng_state(rng: Tensor | None, cuda_rng: Tensor | None, world_size: int) -> None:
    """This rank's saved CPU RNG state (and CUDA one, if any) must be one torch accepts."""
    reference = torch.get_rng_state()
    if rng is None:
        raise corrupt(f"RNG state is missing{' for one of the ' + str(world_size) + ' ranks' if world_size > 1 else ''}")
    if rng.dtype != torch.uint8 or rng.shape != reference.shape:
        raise corrupt(f"RNG state is {rng.dtype} of shape {tuple(rng.shape)}, not uint8 of {tuple(reference.shape)}")
    try:  # torch checks the generator's own consistency; try it on a scratch generator
        torch.Generator().set_state(rng)
    except RuntimeError:
        raise corrupt("RNG state is invalid") from None
    if cuda_rng is not None and cuda_rng.dtype != torch.uint8:
        raise corrupt("CUDA RNG state is not uint8")


def optimizer_state_to_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optimizer") -> tuple[dict, dict[str, Tensor]]:
    """Split ``optimizer.state_dict()`` into a JSON-able structure and named tensors."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    state: dict[str, dict] = {}
    for index, entry in sd["state"].items():
        out = {}
        for key, value in entry.items():
            if torch.is_tensor(value):
                name = f"{prefix}.{index}.{key}"
                tensors[name] = value.detach()
                out[key] = {_TENSOR_REF: name}
            else:
                out[key] = value
        state[str(index)] = out
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}, tensors


def optimizer_state_from_tensors(structure: Mapping, tensors: Mapping[str, Tensor]) -> dict:
    """The inverse of ``optimizer_state_to_tensors``: a dict for ``optimizer.load_state_dict``."""
    state = {}
    for index, entry in structure["state"].items():
        out = {}
        for key, value in entry.items():
            if isinstance(value, dict) and _TENSOR_REF in value:
                if value[_TENSOR_REF] not in tensors:
                    raise CheckpointError(f"the optimizer state '{value[_TENSOR_REF]}' is missing; the partial checkpoint is corrupt")
                out[key] = tensors[value[_TENSOR_REF]]
            else:
                out[key] = value
        state[int(index)] = out
    groups = [dict(g) for g in structure["param_groups"]]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


class StopFlag:
    """Set to ask a running ``Trainer`` to save its state and stop after the current step."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str = "stop requested") -> None:
        self.reason = reason

    @property
    def is_set(self) -> bool:
        return self.reason is not None


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[None]:
    """While inside, SIGINT (Ctrl-C) and SIGTERM set ``flag`` instead of killing the process; a
    second Ctrl-C raises KeyboardInterrupt at once. The previous handlers are restored on exit.
    Outside the main thread (where Python allows no handlers) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if flag.is_set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.set(signal.Signals(signum).name)

    # a signal this process ignores stays ignored (a sweep worker leaves Ctrl-C to its parent)
    caught = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, handler) for sig in caught}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
