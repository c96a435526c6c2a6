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

This module names the rules (it imports no torch, for ``--help``); ``select.py`` applies them.
"""

from __future__ import annotations

from force_cli.errors import UnknownNameError

TIE_RULES: dict[str, str] = {
    "exact": "keep exactly each step's count; equal scores at the threshold are ranked by position",
    "keep": "keep every weight scoring >= the threshold, as the FORCE paper code's get_mask (a step may keep a few more)",
}


def check_tie_rule(name: str) -> str:
    if name not in TIE_RULES:
        raise UnknownNameError("tie rule", name, TIE_RULES)
    return name
