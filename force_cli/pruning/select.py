"""One pruning step's choice: which weights its scores keep, under the run's budget (``budgets.py``)
and tie rule (``ties.py``, whose meaning the functions at the end apply)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from force_cli.pruning.budgets import layer_counts
from force_cli.pruning.masks import Masks, keep_top_k
from force_cli.pruning.topk import Workspace


def select(scores: Mapping[str, torch.Tensor], k: int, *, budget: str = "global", ties: str = "exact",
           capacities: Mapping[str, int] | None = None,
           workspace: Workspace | None = None) -> tuple[Masks, float | None]:
    """The masks of the ``k`` best ``scores`` and the lowest score kept (None: all or none kept).

    ``budget="global"`` ranks all layers together; any other budget (``budgets.py``) first gives
    each layer its count, at most ``capacities[name]``, and ranks within each layer; the lowest
    score kept is then the lowest of the layers'. ``ties="keep"`` adds every weight tied with its
    selection's lowest kept score (``ties.py``).
    """
    counts = layer_counts(budget, {n: tuple(s.shape) for n, s in scores.items()}, k, capacities)
    if counts is None:
        masks, threshold = keep_top_k(scores, k, return_threshold=True, workspace=workspace)
        thresholds = dict.fromkeys(masks, threshold)
    else:
        masks, thresholds = {}, {}
        for name, s in scores.items():
            layer, thresholds[name] = keep_top_k({name: s}, counts[name], return_threshold=True, workspace=workspace)
            masks[name] = layer[name]
        threshold = min((t for t in thresholds.values() if t is not None), default=None)
    if ties == "keep":
        keep_tied_(masks, scores, thresholds)
    return masks, threshold


def exclude_pruned_(scores: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], ties: str) -> None:
    """Give the pruned weights (``masks`` False) of one step's ``scores`` the lowest rank, in place.

    ``exact``: -inf, so they are never chosen while kept weights remain. ``keep``: the paper code's
    value, min(0, lowest score of a kept weight), so they tie with the lowest scores.
    """
    if ties == "exact":
        for name, s in scores.items():
            s.masked_fill_(~masks[name], float("-inf"))
        return
    lowest = torch.stack([torch.where(masks[n], s, torch.full((), float("inf"), dtype=s.dtype, device=s.device)).amin()
                          for n, s in scores.items()]).amin().clamp(max=0)
    for name, s in scores.items():
        s.masked_fill_(~masks[name], lowest.to(s.dtype))


def keep_tied_(masks: Mapping[str, torch.Tensor], scores: Mapping[str, torch.Tensor],
               thresholds: Mapping[str, float | None]) -> None:
    """Add to ``masks``, in place, every weight whose score equals or exceeds its layer's threshold.

    ``thresholds[name]`` is the lowest score kept in that layer's selection (the global one for a
    global top-k); None keeps the layer as it is (it kept every weight, or none)."""
    for name, mask in masks.items():
        threshold = thresholds.get(name)
        if threshold is not None:
            mask |= scores[name] >= threshold
