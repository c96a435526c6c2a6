"""One pruning step's choice: which weights its scores keep, under the run's budget and tie rule."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from force_cli.pruning.budgets import layer_counts
from force_cli.pruning.masks import Masks, keep_top_k
from force_cli.pruning.ties import keep_tied_
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
