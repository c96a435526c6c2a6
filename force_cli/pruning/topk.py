"""Exact global top-k over many score tensors, at about the cost of two comparisons per score.

The order is total and deterministic: a higher score ranks first, NaN ranks last, and equal scores
rank by position (earlier part first, then lower index). Exactly ``k`` positions are selected.

A full selection over tens of millions of scores costs more than a forward-backward pass, and a
flat copy of them costs a page fault per 4 KiB. So, for large inputs, a strided sample brackets the
k-th largest score in [lo, hi]; one pass over the scores, a cache-sized chunk at a time, marks
those above ``hi`` (they are kept, and that mask becomes the result in place) and finds the few
positions inside the band; the exact choice is then made among the band's values alone. The
bracket can miss, never mislead: a miss is detected by counting and falls back to a full selection.

Two CPU costs shape the code. A fresh buffer above glibc's mmap threshold (128 KiB) costs a page
fault per 4 KiB at every use, so a pruning run passes one ``Workspace`` whose buffers every step
reuses. And a comparison that writes bool is several times slower than the same comparison written
as 0/1 in the scores' float dtype (vectorised) followed by a conversion to bool; float flags are
also counted by a plain sum, in float32 while a chunk holds fewer than 2**24 of them.

All of this is for the CPU. On a GPU, where each of these small operations is a kernel launch and
each count read back a stall, ``flat.top_k`` makes the same selection over one flat copy instead.
"""

from __future__ import annotations

import numpy as np
import torch

from force_cli.pruning.flat import takes_flat_path
from force_cli.pruning.flat import top_k as flat_top_k

#: Scores sampled to bracket the threshold (at most one in 16). Inputs of fewer than MIN_SAMPLED
#: scores, or of mixed or non-float dtypes, take the full selection directly.
SAMPLE = 1 << 16
MIN_SAMPLED = 1 << 15
#: Below this many scores, one flat copy costs less than a dozen small operations per part.
FLATTEN_BELOW = 1 << 20
#: Scores compared per chunk (1 MiB of float32): the chunk and its flags stay in the cache.
CHUNK = 1 << 18


class Workspace:
    """Scratch buffers that every selection of one pruning run reuses, grown on demand."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, like: torch.Tensor, numel: int) -> torch.Tensor:
        """A 1-d buffer of ``numel`` elements with ``like``'s dtype and device (contents undefined)."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = self._buffers[name] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buffer[:numel]

    def flags(self, name: str, op, p: torch.Tensor, value: float) -> torch.Tensor:
        """``op(p, value)`` as 0/1 in ``p``'s dtype, written into the buffer ``name``."""
        return op(p, value, out=self.get(name, p, p.numel()))


def top_k_masks(parts: list[torch.Tensor], k: int, workspace: Workspace | None = None) -> list[torch.Tensor]:
    """Boolean masks (new tensors, shaped like ``parts``, which must be 1-d) of the k best positions."""
    return top_k_masks_and_threshold(parts, k, workspace)[0]


def top_k_masks_and_threshold(parts: list[torch.Tensor], k: int,
                              workspace: Workspace | None = None) -> tuple[list[torch.Tensor], float]:
    """``top_k_masks`` and the k-th largest score as a float (NaN counted as -inf), 1 <= k."""
    sizes = [p.numel() for p in parts]
    if takes_flat_path(parts[0].device):  # a GPU: one flat copy, a few kernels, one read-back
        if len(parts) == 1:  # one layer (a per-layer budget): flat_top_k neither changes nor keeps it
            kept, threshold = flat_top_k(parts[0], k)
            return [kept], threshold
        kept, threshold = flat_top_k(torch.cat(parts), k)
        return [m.clone() for m in kept.split(sizes)], threshold
    workspace = workspace or Workspace()
    if len(parts) > 1 and sum(sizes) < FLATTEN_BELOW and len({p.dtype for p in parts}) == 1:
        flat = torch.cat(parts, out=workspace.get("flat", parts[0], sum(sizes)))
        (kept,), threshold = _select([flat], k, workspace)
        return [m.clone() for m in kept.split(sizes)], threshold  # separate tensors: callers may save them
    return _select(parts, k, workspace)


def _select(parts: list[torch.Tensor], k: int, workspace: Workspace) -> tuple[list[torch.Tensor], float]:
    """The sampled selection when its bracket holds the k-th score, else the full one."""
    bracket = _bracket(parts, k)
    if bracket is not None:
        lo, hi = bracket
        kept, band, above = [], [], 0
        for p in parts:
            part_kept, part_band, part_above = _split_at_bracket(workspace, p, lo, hi)
            kept.append(part_kept)
            band.append(part_band)
            above += part_above
        need = k - above
        if 0 <= need <= sum(b.numel() for b in band):
            threshold = _keep_best_of_band(parts, kept, band, need)
            if threshold is None:  # exactly k scores above the band: the k-th is their minimum
                threshold = min(float(p[m].min()) for p, m in zip(parts, kept) if m.any())
            return kept, threshold
    return _top_k_full(parts, k)


def _ranked(values: torch.Tensor, first: int, last: int) -> tuple[float, float]:
    """The ``first``-th and ``last``-th largest of 1-d ``values`` (0-based, first <= last, no NaN).

    One partial sort from the nearer end when it covers at most a quarter of ``values``: then it
    is several times cheaper than two ``kthvalue`` calls, which cost less beyond that."""
    n = values.numel()
    if min(last + 1, n - first) > n // 4:
        return (torch.kthvalue(values, n - first).values.item(), torch.kthvalue(values, n - last).values.item())
    if last < n // 2:
        top = torch.topk(values, last + 1, sorted=True).values  # descending
        return top[first].item(), top[last].item()
    bottom = torch.topk(values, n - first, largest=False, sorted=True).values  # ascending
    return bottom[n - 1 - first].item(), bottom[n - 1 - last].item()


def _split_at_bracket(workspace: Workspace, p: torch.Tensor, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(``p > hi`` as a new bool mask, sorted positions of ``lo <= p <= hi``, the mask's count).

    One chunk of about CHUNK scores at a time, so that the five operations on it run in the cache
    instead of each reading the whole part from memory. ``p > hi`` implies ``p >= lo``, so the
    band's flags are the difference of the two comparisons' 0/1 flags. NaN is in neither.
    """
    kept = torch.empty(p.numel(), dtype=torch.bool, device=p.device)
    positions, above = [], 0
    # equal chunks of 0.5 to 1.5 CHUNK (a GPU never comes here: it takes flat.top_k)
    pieces = max(1, round(p.numel() / CHUNK))
    size = max(1, -(-p.numel() // pieces))
    exact = torch.float32 if size < 1 << 24 else torch.float64  # sums of ones stay exact
    for start in range(0, p.numel(), size):
        chunk = p[start:start + size]
        over = workspace.flags("over", torch.gt, chunk, hi)
        kept[start:start + chunk.numel()].copy_(over)
        inside = workspace.flags("inside", torch.ge, chunk, lo).sub_(over)
        above += int(over.sum(dtype=exact))
        if inside.sum(dtype=exact) > 0:  # a sum: Tensor.any() on floats is ~10x slower
            marks = workspace.get("marks", kept, chunk.numel()).copy_(inside)
            positions.append(sparse_positions(marks).add_(start))
    band = torch.cat(positions) if positions else torch.empty(0, dtype=torch.long, device=p.device)
    return kept, band, above


def _bracket(parts: list[torch.Tensor], k: int) -> tuple[float, float] | None:
    """[lo, hi], finite at the bottom, that very probably holds the k-th largest score; None to skip."""
    total = sum(p.numel() for p in parts)
    dtypes = {p.dtype for p in parts}
    if total < MIN_SAMPLED or len(dtypes) != 1 or not parts[0].is_floating_point():
        return None
    stride = max(1, total // min(SAMPLE, total // 16))
    sample = torch.cat([p[::stride] for p in parts]).nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    n = drawn = sample.numel()
    q = k / total * drawn  # expected rank of the k-th largest inside the sample
    margin = 4.0 * (q * (1 - k / total)) ** 0.5 + 16
    # Python floats compare exactly: they are values of ``parts``, whose dtype the comparisons use
    hi, lo = _ranked(sample, min(n - 1, max(0, int(q - margin))), min(n - 1, int(q + margin)))
    if hi == float("-inf"):
        return None  # -inf scores would be kept: let the full selection order them
    if lo == float("-inf"):  # keep the band off the (often many) -inf scores of pruned weights
        lo = sample[sample > float("-inf")].min().item()
    return lo, hi


def sparse_positions(mask: torch.Tensor) -> torch.Tensor:
    """``torch.nonzero(mask).flatten()`` for a 1-d bool mask, several times faster on the CPU.

    On the CPU, numpy's ``flatnonzero`` reads the same memory (no copy) at 2 to 10 times the speed
    of ``torch.nonzero`` on one thread (55 against 120-560 µs for 266 k booleans, 0.5 % set).
    Only the CPU path calls it: a GPU selects with ``flat.top_k``.
    """
    return torch.from_numpy(np.flatnonzero(mask.numpy())).to(torch.int64)


def _keep_best_of_band(parts, kept, band, need: int) -> float | None:
    """Add to ``kept`` the ``need`` best band positions: by score, then earliest position.

    Returns the lowest score added (None when ``need`` is 0)."""
    if need == 0:
        return None
    values = torch.cat([p.index_select(0, b) for p, b in zip(parts, band)])
    threshold = torch.kthvalue(values, values.numel() - need + 1).values
    chosen = values > threshold
    ties = torch.nonzero(values == threshold).flatten()[: need - int(torch.count_nonzero(chosen))]
    chosen[ties] = True
    for m, b, c in zip(kept, band, chosen.split([b.numel() for b in band])):
        m.index_fill_(0, b[c], True)
    return float(threshold)


def _top_k_full(parts: list[torch.Tensor], k: int) -> tuple[list[torch.Tensor], float]:
    """The same selection by one full k-th value over a flat copy (small inputs, or a missed bracket)."""
    total = sum(p.numel() for p in parts)
    flat = torch.cat(parts)
    if flat.is_floating_point():
        flat = torch.nan_to_num_(flat, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    threshold = torch.kthvalue(flat, total - k + 1).values
    del flat
    kept = [p > threshold for p in parts]
    missing = k - sum(int(torch.count_nonzero(m)) for m in kept)
    for p, m in zip(parts, kept):  # the first `missing` scores tied at the threshold, in order
        if missing <= 0:
            break
        tied = torch.nonzero(p == threshold).flatten()[:missing]
        m[tied] = True
        missing -= tied.numel()
    for p, m in zip(parts, kept):  # only when k exceeds the number of non-NaN scores: NaNs come last
        if missing <= 0:
            break
        tied = torch.nonzero(torch.isnan(p)).flatten()[:missing]
        m[tied] = True
        missing -= tied.numel()
    return kept, float(threshold)
