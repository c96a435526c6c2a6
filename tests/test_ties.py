"""The tie rules of a pruning step (``--ties exact|keep``), on scores worked out by hand."""

from __future__ import annotations

import pytest
import torch

from force_cli.errors import UnknownNameError
from force_cli.pruning.select import exclude_pruned_, select
from force_cli.pruning.ties import check_tie_rule


def test_exact_keeps_the_count_and_keep_adds_every_score_tied_at_the_threshold():
    scores = {"a": torch.tensor([3.0, 2.0, 1.0]), "b": torch.tensor([[2.0, 0.5], [2.0, 4.0]])}
    # ranked: 4 (b3), 3 (a0), then 2 three times (a1, b0, b2): k = 3 lands inside the tie
    exact, threshold = select(scores, 3, ties="exact")
    assert threshold == 2.0
    assert exact["a"].tolist() == [True, True, False]  # the first of the tied, by position
    assert exact["b"].tolist() == [[False, False], [False, True]]
    kept, _ = select(scores, 3, ties="keep")
    assert kept["a"].tolist() == [True, True, False]
    assert kept["b"].tolist() == [[True, False], [True, True]]  # the other two tied at 2 as well


def test_without_a_tie_both_rules_agree():
    scores = {"a": torch.tensor([5.0, 1.0, 3.0, 2.0])}
    exact, _ = select(scores, 2, ties="exact")
    kept, _ = select(scores, 2, ties="keep")
    assert exact["a"].tolist() == kept["a"].tolist() == [True, False, True, False]


def test_pruned_weights_are_excluded_under_exact_and_floored_as_the_paper_code_under_keep():
    masks = {"a": torch.tensor([True, False, True]), "b": torch.tensor([True, False])}
    raw = {"a": torch.tensor([0.0, 9.0, 0.25]), "b": torch.tensor([0.5, 7.0])}

    exact = {n: s.clone() for n, s in raw.items()}
    exclude_pruned_(exact, masks, "exact")
    assert exact["a"].tolist() == [0.0, float("-inf"), 0.25] and exact["b"].tolist() == [0.5, float("-inf")]

    keep = {n: s.clone() for n, s in raw.items()}
    exclude_pruned_(keep, masks, "keep")
    # the paper code: a pruned weight gets the lowest saliency, its own counted as 0: min(0, 0) = 0
    assert keep["a"].tolist() == [0.0, 0.0, 0.25] and keep["b"].tolist() == [0.5, 0.0]
    # a step that must keep 3 then has threshold 0, and keeps every weight scoring 0: the pruned too
    kept, threshold = select(keep, 3, ties="keep")
    assert threshold == 0.0
    assert kept["a"].tolist() == [True, True, True] and kept["b"].tolist() == [True, True]
    kept, _ = select(exact, 3, ties="exact")
    assert kept["a"].tolist() == [True, False, True] and kept["b"].tolist() == [True, False]


def test_the_floor_is_the_lowest_kept_score_when_that_is_negative():
    masks = {"a": torch.tensor([True, False, True])}
    scores = {"a": torch.tensor([-2.0, 5.0, 1.0])}
    exclude_pruned_(scores, masks, "keep")
    assert scores["a"].tolist() == [-2.0, -2.0, 1.0]


def test_an_unknown_rule_is_refused_naming_the_known_ones():
    with pytest.raises(UnknownNameError, match="exact"):
        check_tie_rule("some")
