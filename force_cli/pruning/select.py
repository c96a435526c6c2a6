"""One pruning step's choice: which weights its scores keep, under the run's tie rule."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from force_cli.pruning.masks import Masks, keep_top_k
from force_cli.pruning.ties import keep_tied_
from force_cli.pruning.topk import Workspace


def select(scores: Mapping[str, torch.Tensor], k: int, *, ties: str = "exact",
           workspace: Workspace | None = None) -> tuple[Masks, float | None]:
    """The masks of the ``k`` best ``scores`` (global top-k) and the lowest score kept.

    ``ties="keep"`` then adds every weight tied with that lowest score (``ties.py``). The
    threshold is None when the step kept every weight or none.
    """
    masks, threshold = keep_top_k(scores, k, return_threshold=True, workspace=workspace)
    if ties == "keep" and threshold is not None:
        keep_tied_(masks, scores, dict.fromkeys(masks, threshold))
    return masks, threshold
