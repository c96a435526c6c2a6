"""What a partial checkpoint needs besides the weights: the optimizer state as tensors plus JSON
(never pickle), and the flag that Ctrl-C or SIGTERM sets to stop training between two steps."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from force_cli.errors import CheckpointError

_TENSOR_REF = "tensor"


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
