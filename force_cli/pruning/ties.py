"""What a pruning step does with scores tied at its threshold (``--ties exact|keep``).

``exact`` (the default) keeps exactly the step's count: the selection in ``topk.py`` ranks equal
scores by position. ``keep`` is the FORCE paper code's ``get_mask``: it keeps every weight whose
score is ``>=`` the count-th largest, so a step keeps a few more weights than its count when scores
tie there. Exact float32 ties do occur on real networks, and iterative pruning turns one extra
weight into a different mask (docs/mask-stability.md), so only ``keep`` gives the paper code's
masks bit for bit.

For the methods whose pruned weights stay pruned, the paper code does not exclude a pruned weight:
it gives it the step's lowest saliency, where a pruned weight's own saliency is 0 (its weight or
its gradient is masked). ``exact`` excludes pruned weights outright (score -inf). ``keep`` uses
the paper's floor, so a step whose threshold falls on that lowest value (too few informative
scores) keeps every pruned weight again, exactly as the paper code does.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from force_cli.errors import UnknownNameError

TIE_RULES: dict[str, str] = {
    "exact": "keep exactly each step's count; equal scores at the threshold are ranked by position",
    "keep": "keep every weight scoring >= the threshold, as the FORCE paper code's get_mask (a step may keep a few more)",
}


def check_tie_rule(name: str) -> str:
    if name not in TIE_RULES:
        raise UnknownNameError("tie rule", name, TIE_RULES)
    return name


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
