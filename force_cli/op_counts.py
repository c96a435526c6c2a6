"""Count the operations torch dispatches and the host read-backs among them (for tests and benchmarks).

On a GPU every dispatched operation is (about) one kernel launch, and every read-back stalls the
host until the device is idle, so these two counts, taken on the CPU, predict what a hot loop
costs on a GPU without one. A read-back is an operation whose result the host must wait for:
``.item()`` / ``int()`` / ``float()`` / ``bool()`` of a tensor (``_local_scalar_dense``),
``nonzero``, boolean indexing, ``masked_select``, ``unique``, and the copies to the host that on a
CPU tensor dispatch nothing (``.cpu()``, ``.numpy()``, ``.tolist()``, and ``.to("cpu")`` of a
tensor on another device), seen one level up, as torch functions. Run on the CPU, code that is
meant for a GPU counts every ``.cpu()`` it calls: that is what it would do there.

    with OpCounter() as counter:
        loss(model(x), y).backward()
    counter.ops, counter.read_backs
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

#: aten operations whose output size or value the host must wait for.
_READ_BACK_OPS = frozenset({
    "_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim",
    "unique_consecutive", "equal", "repeat_interleave",
})
#: Operations that read back when one of their indices is a boolean mask.
_BOOL_INDEXED_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl", "_index_put_impl_"})
#: Tensor methods that copy to the host without dispatching anything when the tensor is on the CPU.
_HOST_COPIES = frozenset({"cpu", "numpy", "tolist"})


def _is_bool_index(indices) -> bool:
    return isinstance(indices, (list, tuple)) and any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def _names_cpu(value) -> bool:
    return (isinstance(value, torch.device) and value.type == "cpu") or value == "cpu"


def _leaves_a_device(args, kwargs) -> bool:
    """``tensor.to(...)`` from a non-CPU device to the CPU. (``.to(device)`` on the CPU names no
    other device: code that runs where the tensors are is no read-back, whatever the device.)"""
    return (bool(args) and isinstance(args[0], torch.Tensor) and args[0].device.type != "cpu"
            and (any(_names_cpu(a) for a in args[1:]) or _names_cpu(kwargs.get("device"))))


class _Dispatched(TorchDispatchMode):
    def __init__(self, owner: OpCounter):
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.owner.by_name[name] += 1
        if name in _READ_BACK_OPS or (name in _BOOL_INDEXED_OPS and len(args) > 1 and _is_bool_index(args[1])):
            self.owner.read_back_names[name] += 1
        return func(*args, **(kwargs or {}))


class _Functions(TorchFunctionMode):
    def __init__(self, owner: OpCounter):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        kwargs = kwargs or {}
        if name in _HOST_COPIES or (name == "to" and _leaves_a_device(args, kwargs)):
            self.owner.read_back_names[f"Tensor.{name}"] += 1
        return func(*args, **kwargs)


class OpCounter:
    """Context manager: ``ops`` dispatched operations and ``read_backs`` among them (see module doc).

    ``by_name`` and ``read_back_names`` break both down by operation name; ``snapshot()`` returns
    the two totals so far, so one run can be cut into steps.
    """

    def __init__(self) -> None:
        self.by_name: Counter[str] = Counter()
        self.read_back_names: Counter[str] = Counter()
        self._modes = (_Functions(self), _Dispatched(self))

    @property
    def ops(self) -> int:
        return sum(self.by_name.values())

    @property
    def read_backs(self) -> int:
        return sum(self.read_back_names.values())

    def snapshot(self) -> tuple[int, int]:
        return self.ops, self.read_backs

    def __enter__(self) -> OpCounter:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
