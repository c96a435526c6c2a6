"""Global top-k (exact count, deterministic ties) and density schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from force_cli.errors import ConfigError, UnknownNameError
from force_cli.pruning.masks import keep_top_k, kept_for_sparsity, validate_masks
from force_cli.pruning.schedules import kept_counts
from force_cli.errors import CheckpointError
from tests.helpers import tiny_mlp


def reference_top_k(scores, k):
    """Independent implementation: a stable sort by descending score, index order breaking ties."""
    names = list(scores)
    flat = torch.cat([scores[n].flatten() for n in names]).tolist()
    order = sorted(range(len(flat)), key=lambda i: (-(flat[i] if flat[i] == flat[i] else float("-inf")), i))
    keep = torch.zeros(len(flat), dtype=torch.bool)
    keep[order[:k]] = True
    out, offset = {}, 0
    for n in names:
        out[n] = keep[offset:offset + scores[n].numel()].view(scores[n].shape)
        offset += scores[n].numel()
    return out


@pytest.mark.parametrize("k", [0, 1, 7, 50, 99, 100])
def test_top_k_matches_a_sort_based_reference_with_heavy_ties(k):
    g = torch.Generator().manual_seed(k)
    scores = {"a": torch.randint(0, 4, (5, 6), generator=g).float(), "b": torch.randint(0, 4, (70,), generator=g).float()}
    scores["b"][3] = float("nan")
    masks = keep_top_k(scores, k)
    ref = reference_top_k(scores, k)
    assert sum(int(m.sum()) for m in masks.values()) == k
    for n in scores:
        assert torch.equal(masks[n], ref[n])


def test_top_k_with_all_scores_equal_keeps_the_first_k():
    masks = keep_top_k({"a": torch.zeros(4), "b": torch.zeros(3)}, 5)
    assert masks["a"].tolist() == [True] * 4 and masks["b"].tolist() == [True, False, False]


@pytest.mark.parametrize("schedule", ["exp", "linear"])
@pytest.mark.parametrize("total,k,steps", [(1000, 5, 60), (1000, 999, 10), (7, 1, 100), (123456, 617, 1), (50, 50, 3)])
def test_schedules_land_exactly_on_k_and_never_grow(schedule, total, k, steps):
    counts = kept_counts(schedule, total, k, steps)
    assert len(counts) == steps
    assert counts[-1] == k
    assert all(a >= b for a, b in zip([total] + counts, counts))
    assert min(counts) >= k


def test_exp_and_linear_schedules_follow_their_formulas_with_the_paper_codes_floor():
    total, k, steps = 10_000, 100, 4  # ρ = 0.01
    # exp: 10⁴·0.01^(t/4) = 3162.28, 1000.0, 316.23; linear: 10⁴·(1 - 0.99t/4) = 7525, 5050, 2575,
    # where 1 - 0.99/4 is 0.75249999... in binary, so the paper's int() keeps 7524, not round()'s 7525.
    assert kept_counts("exp", total, k, steps, density=0.01) == [3162, 1000, 316, 100]
    assert kept_counts("linear", total, k, steps, density=0.01) == [7524, 5050, 2575, 100]


def paper_counts(mode, total, pruning_factor, steps):
    """The FORCE paper code's per-step kept counts, written out independently with numpy:
    int(N · ρ_t) with ρ_t from its exp / linear formulas."""
    if mode == "exp":
        rho = [np.exp(0 - ((x + 1) * (0 - np.log(pruning_factor)) / steps)) for x in range(steps)]
    else:
        rho = [1 - ((x + 1) * (1 - pruning_factor) / steps) for x in range(steps)]
    return [int(total * r) for r in rho]


@pytest.mark.parametrize("schedule", ["exp", "linear"])
def test_intermediate_counts_equal_the_paper_codes_for_many_sizes(schedule):
    rng = np.random.default_rng(0)
    for _ in range(300):
        total = int(rng.integers(100, 3_000_000))
        sparsity = float(rng.choice([0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, rng.uniform(0.5, 0.999)]))
        steps = int(rng.integers(2, 120))
        k = kept_for_sparsity(total, sparsity)
        ours = kept_counts(schedule, total, k, steps, density=1 - sparsity)
        paper = paper_counts(schedule, total, 1 - sparsity, steps)
        assert ours[:-1] == [max(k, c) for c in paper[:-1]]
        assert ours[-1] == k


def test_kept_for_sparsity_is_round_of_remaining_fraction_and_refuses_bad_values():
    assert kept_for_sparsity(1000, 0.995) == 5
    assert kept_for_sparsity(1001, 0.5) == round(0.5 * 1001)
    assert kept_for_sparsity(10, 0.0) == 10
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError, match=r"\[0, 1\)"):
            kept_for_sparsity(1000, bad)
    with pytest.raises(ConfigError, match="fewer than one"):
        kept_for_sparsity(100, 0.999)


def test_unknown_schedule_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="exp, linear"):
        kept_counts("cosine", 10, 5, 3)


def test_validate_masks_names_missing_extra_and_misshaped_masks():
    model = tiny_mlp()
    good = {"0.weight": torch.ones(5, 6, dtype=torch.bool), "2.weight": torch.ones(3, 5, dtype=torch.bool)}
    validate_masks(good, model)
    with pytest.raises(CheckpointError, match="no mask for prunable weight '2.weight'"):
        validate_masks({"0.weight": good["0.weight"]}, model)
    with pytest.raises(CheckpointError, match="'9.weight' matches no prunable weight"):
        validate_masks(good | {"9.weight": torch.ones(1, dtype=torch.bool)}, model)
    with pytest.raises(CheckpointError, match=r"shape \(5, 5\)"):
        validate_masks(good | {"0.weight": torch.ones(5, 5, dtype=torch.bool)}, model)


def sorted_reference_top_k(scores, k):
    """A second implementation for large inputs: one stable sort (ties by index, NaN last)."""
    names = list(scores)
    flat = torch.cat([scores[n].flatten() for n in names]).double()
    key = torch.where(torch.isnan(flat), torch.tensor(float("inf"), dtype=flat.dtype), -flat)
    order = torch.sort(key, stable=True).indices
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    return dict(zip(names, torch.split(keep, [scores[n].numel() for n in names]))), names


@pytest.mark.parametrize("case", ["continuous", "ties", "masked", "nan_heavy"])
@pytest.mark.parametrize("fraction", [0.001, 0.3, 0.97])
def test_top_k_on_large_inputs_matches_a_full_sort(case, fraction):
    g = torch.Generator().manual_seed(11)
    a, b = torch.rand(300, 700, generator=g), torch.rand(123_457, generator=g)
    if case == "ties":
        a, b = (a * 20).floor(), (b * 20).floor()
    if case == "masked":  # like a non-reviving method: most scores are -inf
        a[a < 0.6] = float("-inf")
        b[b < 0.6] = float("-inf")
    if case == "nan_heavy":
        a[a < 0.5] = float("nan")
    scores = {"a": a, "b": b}
    total = a.numel() + b.numel()
    k = max(1, round(fraction * total))
    masks = keep_top_k(scores, k)
    ref, names = sorted_reference_top_k(scores, k)
    for n in names:
        assert torch.equal(masks[n].flatten(), ref[n]), n
    assert sum(int(m.sum()) for m in masks.values()) == k
