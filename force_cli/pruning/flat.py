"""The pruning step on a GPU: flat buffers, a selection in a few kernels, one read-back per step.

On a GPU every dispatched operation is a kernel launch and every read-back (``.item()``,
``nonzero``, boolean indexing, ``.cpu()``) stalls the host until the device is idle. The CPU's
selection (``topk.py``) is tuned for a CPU's caches instead: chunk by chunk, with counts read back
as it goes. So on any device but the CPU a step works on flat buffers:

- the working copy's prunable weights are views of one flat buffer (``FlatWeights``), so θ0 ⊙ c
  is loaded with two operations whatever the number of layers;
- after the backward pass the step's scores are copied into that same buffer, as θ0 ⊙ c is not
  needed again before the next step loads it: the step allocates no float buffer of its own;
- the masks are views of one flat bool tensor (``FlatMasks``);
- ``top_k`` finds the k-th largest score with one ``torch.topk`` (on the smaller side) and
  breaks the ties at it by position with a cumulative sum of the tie flags: exactly k, in the
  order of ``topk.py`` (higher score first, NaN last, ties by position: earlier layer, then lower
  index), with the one read-back of the threshold at the end.

``CPU_PATH_DEVICES`` names the device types that keep the CPU selection. Tests empty it to run this
path on the CPU, where its operations and read-backs can be counted.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Device types whose pruning steps take the CPU selection of ``topk.py``; all others take this one.
CPU_PATH_DEVICES = frozenset({"cpu"})


def takes_flat_path(device: torch.device) -> bool:
    return device.type not in CPU_PATH_DEVICES


class FlatMasks(dict):
    """Masks (name -> bool tensor) that are views, in order, of the one flat bool tensor ``flat``."""

    def __init__(self, flat: Tensor, shapes: dict[str, torch.Size]):
        sizes = [s.numel() for s in shapes.values()]
        super().__init__((n, m.view(s)) for (n, s), m in zip(shapes.items(), flat.split(sizes)))
        self.flat = flat

    @classmethod
    def dense(cls, shapes: dict[str, torch.Size], device: torch.device) -> FlatMasks:
        return cls(torch.ones(sum(s.numel() for s in shapes.values()), dtype=torch.bool, device=device), shapes)

    def to_cpu(self) -> dict[str, Tensor]:
        """Separate CPU tensors (callers may save them), from one copy to the host."""
        host = self.flat.cpu()
        return {n: h.view(m.shape).clone() for (n, m), h in zip(self.items(), host.split([m.numel() for m in self.values()]))}


class FlatWeights:
    """The working copy's prunable weights rebound as views of one flat buffer ``flat``, in order.

    ``usable`` is False when the weights cannot share one buffer (mixed dtypes or devices, a
    weight under two names, a non-contiguous layout): callers then fall back to per-layer work.
    """

    def __init__(self, weights: dict[str, nn.Parameter]):
        params = list(weights.values())
        self.names, self.params = list(weights), params
        self.flat = None
        if not params or len({id(p) for p in params}) != len(params) or not all(p.is_contiguous() for p in params) \
                or len({(p.dtype, p.device) for p in params}) != 1:
            return
        self.flat = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        offset = 0
        with torch.no_grad():
            for p in params:
                view = self.flat[offset:offset + p.numel()].view(p.shape)
                view.copy_(p)
                p.data = view
                offset += p.numel()

    @property
    def usable(self) -> bool:
        """Whether the weights are still views of ``flat`` (SynFlow's ``double()`` replaces them)."""
        return self.flat is not None and self.params[0].data_ptr() == self.flat.data_ptr()

    def fits(self, masks) -> bool:
        """Whether ``masks`` lie in one flat tensor in the order of ``flat`` (so ``load`` applies)."""
        return isinstance(masks, FlatMasks) and self.usable and list(masks) == self.names

    @torch.no_grad()
    def load(self, initial: list[Tensor], masks: FlatMasks) -> None:
        """weights = θ0 ⊙ c, in two operations (bit-identical to the per-layer product)."""
        torch._foreach_copy_(self.params, initial)
        self.flat.mul_(masks.flat)

    @torch.no_grad()
    def take(self, scores: dict[str, Tensor]) -> Tensor | None:
        """``scores`` copied into ``flat``, in their own order; None when they do not fit it
        (shapes, dtype, or scores that are the weights themselves)."""
        values = list(scores.values())
        if not self.usable or len(values) != len(self.params) or any(
                v.dtype != self.flat.dtype or v.device != self.flat.device or v.shape != p.shape
                or v.untyped_storage().data_ptr() == self.flat.untyped_storage().data_ptr()
                for v, p in zip(values, self.params)):
            return None
        torch._foreach_copy_(self.params, values)
        return self.flat


@torch.no_grad()
def keep_top_k(scores: dict[str, Tensor], k: int, *, pruned: FlatMasks | None = None,
               weights: FlatWeights | None = None) -> tuple[FlatMasks, float | None]:
    """One step's selection: exactly the masks and threshold of ``masks.keep_top_k`` for 1 <= k.

    ``pruned`` (for criteria whose pruned weights stay pruned): its False positions score -inf.
    ``weights``: the working weights, whose buffer takes the scores when it can.
    """
    names = list(scores)
    shapes = {n: scores[n].shape for n in names}
    if k >= sum(s.numel() for s in shapes.values()):  # every weight: no threshold, as keep_top_k
        return FlatMasks.dense(shapes, scores[names[0]].device), None
    flat = weights.take(scores) if weights is not None else None
    if flat is None:
        flat = torch.cat([scores[n].reshape(-1) for n in names])
    if pruned is not None:
        kept_before = pruned.flat if list(pruned) == names else torch.cat([pruned[n].reshape(-1) for n in names])
        flat.masked_fill_(kept_before.logical_not(), float("-inf"))
    kept, threshold = top_k(flat, k)
    return FlatMasks(kept, shapes), threshold


def top_k(flat: Tensor, k: int) -> tuple[Tensor, float]:
    """A bool mask of the k best positions of 1-d ``flat`` (1 <= k <= its length) and the k-th
    largest value as a float (NaN counted as -inf). ``flat`` is not modified.

    A position is kept when its score is above the threshold, or equal to it and among the first
    (k - number above) such positions; NaN scores, below -inf, are taken last and by position.
    """
    n = flat.numel()
    keys = torch.nan_to_num(flat, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf")) \
        if flat.is_floating_point() else flat
    if k <= n // 2:
        threshold = torch.topk(keys, k, sorted=False).values.min()
    else:
        threshold = torch.topk(keys, n - k + 1, largest=False, sorted=False).values.max()
    del keys
    count = torch.int32 if n < 2**31 else torch.int64
    kept = flat > threshold
    ties = flat == threshold  # NaN is never a tie
    kept |= ties & (ties.cumsum(0, dtype=count) <= k - kept.sum())
    value = threshold.item()  # the step's one read-back
    if value == float("-inf"):  # rare: fewer than k scores above NaN, which come last, by position
        nan = flat.isnan()
        kept |= nan & (nan.cumsum(0, dtype=count) <= k - kept.sum())
    return kept, value
