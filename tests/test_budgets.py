"""Per-layer budgets (``--budget``): counts worked out by hand, exact totals, and pruning under them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from force_cli.errors import ConfigError, UnknownNameError
from force_cli.pruning import prune
from force_cli.pruning.budgets import BUDGETS, apportion, erk_densities, layer_counts
from force_cli.pruning.masks import kept_for_sparsity
from tests.helpers import FixedStream, random_batches

# conv 3 -> 4 with a 3x3 kernel (108 weights), linear 16 -> 10 (160), linear 10 -> 3 (30): N = 298
SHAPES = {"conv.weight": (4, 3, 3, 3), "fc1.weight": (10, 16), "fc2.weight": (3, 10)}


def test_erk_by_hand_without_a_dense_layer():
    # raw density (sum of dims) / (product): 13/108, 26/160, 13/30; times the layer size: 13, 26, 13.
    # k = 100: ε = 100 / (13 + 26 + 13); shares 25, 50, 25 (densities 0.231, 0.3125, 0.833 <= 1)
    assert layer_counts("erk", SHAPES, 100) == {"conv.weight": 25, "fc1.weight": 50, "fc2.weight": 25}
    # k = 61: shares 15.25, 30.5, 15.25: floors 60, the one left goes to the largest fraction (fc1)
    assert layer_counts("erk", SHAPES, 61) == {"conv.weight": 15, "fc1.weight": 31, "fc2.weight": 15}


def test_erk_by_hand_with_a_layer_made_dense_and_the_rest_solved_again():
    # k = 150: ε = 150/52 would give fc2 37.5 of its 30 weights (density 1.25): fc2 becomes dense,
    # then ε = (150 - 30) / (13 + 26): conv 13 · 120/39 = 40, fc1 26 · 120/39 = 80
    densities = erk_densities(SHAPES, 150)
    assert densities["fc2.weight"] == 1.0
    assert densities["conv.weight"] == pytest.approx(40 / 108)
    assert densities["fc1.weight"] == pytest.approx(80 / 160)
    assert layer_counts("erk", SHAPES, 150) == {"conv.weight": 40, "fc1.weight": 80, "fc2.weight": 30}


def test_erk_dense_capping_repeats_until_no_layer_exceeds_one():
    # linear 10 -> 8 (80), 8 -> 4 (32), 4 -> 2 (8); raw · size = 18, 12, 6. k = 110: ε = 110/36 gives
    # the last 18.3 of 8: dense. Then ε = 102/30: the middle gets 40.8 of 32: dense. Then the first
    # gets 110 - 40 = 70, density 0.875.
    shapes = {"a": (8, 10), "b": (4, 8), "c": (2, 4)}
    assert layer_counts("erk", shapes, 110) == {"a": 70, "b": 32, "c": 8}


def test_uniform_and_uniform_plus_by_hand():
    # uniform, k = 149 of 298: half of each layer: 54, 80, 15
    assert layer_counts("uniform", SHAPES, 149) == {"conv.weight": 54, "fc1.weight": 80, "fc2.weight": 15}
    # uniform-plus, k = 150: conv dense (108); the other 42 over 190 weights is 0.221 >= 0.2: fc1 35.4,
    # fc2 6.63: floors 35 + 6 = 41, the one left to the larger fraction (fc2)
    assert layer_counts("uniform-plus", SHAPES, 150) == {"conv.weight": 108, "fc1.weight": 35, "fc2.weight": 7}
    # k = 130: 22 / 190 < 0.2: fc2 keeps 20 % (6), fc1 gets the other 16
    assert layer_counts("uniform-plus", SHAPES, 130) == {"conv.weight": 108, "fc1.weight": 16, "fc2.weight": 6}


def test_uniform_plus_refuses_a_sparsity_that_cannot_keep_the_first_layer_dense():
    with pytest.raises(ConfigError, match="at most 0.6174"):  # 1 - (108 + 6) / 298
        layer_counts("uniform-plus", SHAPES, 113)
    assert sum(layer_counts("uniform-plus", SHAPES, 114).values()) == 114


@pytest.mark.parametrize("budget", sorted(BUDGETS))
def test_every_budget_keeps_exactly_k(budget):
    shapes = {"a": (300, 64), "b": (100, 300), "c": (10, 100), "d": (7, 3, 5, 5), "e": (1, 1)}
    total = sum(torch.Size(s).numel() for s in shapes.values())
    for k in [1, 2, 7, 100, 999, 5_000, 20_000, total - 1, total]:
        if budget == "uniform-plus" and k < 300 * 64 + 2:
            continue  # refused (tested above)
        counts = layer_counts(budget, shapes, k)
        if budget == "global":
            assert counts is None
            continue
        assert sum(counts.values()) == k, (budget, k, counts)
        assert all(0 <= counts[n] <= torch.Size(s).numel() for n, s in shapes.items())


def test_apportion_respects_capacities_and_still_totals_k():
    assert apportion({"a": 5.5, "b": 5.5}, {"a": 3, "b": 20}, 11) == {"a": 3, "b": 8}
    with pytest.raises(ConfigError):
        apportion({"a": 5.0}, {"a": 3}, 5)


def test_an_unknown_budget_is_refused():
    with pytest.raises(UnknownNameError, match="erk"):
        layer_counts("erdos", SHAPES, 10)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 40), nn.Tanh(), nn.Linear(40, 30), nn.Tanh(), nn.Linear(30, 5))


def _per_layer(masks):
    return {n: int(m.sum()) for n, m in masks.items()}


def test_random_pruning_follows_the_budget():
    model = _mlp()
    shapes = {n: tuple(m.weight.shape) for n, m in [("0.weight", model[0]), ("2.weight", model[2]), ("4.weight", model[4])]}
    k = kept_for_sparsity(480 + 1200 + 150, 0.9)
    result = prune(model, method="random", sparsity=0.9, budget="erk")
    assert _per_layer(result.masks) == layer_counts("erk", shapes, k)
    assert result.kept == k
    # and the global default lets the layer sizes decide: the big middle layer holds most weights
    glob = _per_layer(prune(model, method="random", sparsity=0.9).masks)
    assert glob != _per_layer(result.masks)


@pytest.mark.parametrize("method", ["force", "iter-snip", "snip"])
def test_score_methods_rank_within_each_layer_under_a_budget(method):
    model = _mlp(1)
    batches = random_batches(6, 16, 12, 5, seed=3)
    result = prune(model, method=method, sparsity=0.95, steps=6, budget="uniform", stream=FixedStream(batches))
    k = kept_for_sparsity(1830, 0.95)
    shapes = {"0.weight": (40, 12), "2.weight": (30, 40), "4.weight": (5, 30)}
    assert _per_layer(result.masks) == layer_counts("uniform", shapes, k)
    # within a layer the highest scores are the ones kept: check the one-shot case directly
    if method == "snip":
        from force_cli.pruning.loop import compute_scores

        scores = compute_scores(model, "snip", stream=FixedStream(batches))
        for name, s in scores.items():
            kept, dropped = s[result.masks[name]], s[~result.masks[name]]
            assert kept.min() >= dropped.max()


def test_iterative_pruning_under_a_budget_never_revives_a_weight():
    """Largest remainders are not monotone (the Alabama paradox): on 15-13-5-2, uniform gives the
    output layer 0 weights for k = 15 and 1 for k = 14, the last two steps here. Pruned weights
    cannot come back, so each layer is capped at what it still holds and the weight goes elsewhere."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(15, 13), nn.Tanh(), nn.Linear(13, 5), nn.Tanh(), nn.Linear(5, 2))
    batches = random_batches(30, 16, 15, 2, seed=4)
    steps = []
    result = prune(model, method="iter-snip", sparsity=0.9481, steps=30, budget="uniform",
                   stream=FixedStream(batches), on_step=lambda info: steps.append(info))
    assert [info.kept for info in steps[-2:]] == [15, 14]
    assert _per_layer(steps[-2].masks) == {"0.weight": 11, "2.weight": 4, "4.weight": 0}
    for before, after in zip(steps, steps[1:]):
        for name in before.masks:
            assert not (after.masks[name] & ~before.masks[name]).any(), f"step {after.step} revived a weight of {name}"
    # uncapped: 10, 3, 1; capped: the output layer holds none, its weight goes to the next fraction
    assert _per_layer(result.masks) == {"0.weight": 10, "2.weight": 4, "4.weight": 0}


@pytest.mark.parametrize("settings", [dict(budget="erk"), dict(ties="keep"), dict(invert_scores=True)])
def test_off_the_cpu_budgets_ties_and_inversion_give_the_cpu_paths_masks(monkeypatch, settings):
    """A GPU's flat selection is global and exact; a budget or kept ties select per layer there
    too, and inversion negates the scores before either. Forced here on the CPU."""
    from force_cli.pruning import flat

    model = _mlp(3)
    batches = random_batches(5, 16, 12, 5, seed=6)
    results = []
    for devices in (flat.CPU_PATH_DEVICES, frozenset()):
        monkeypatch.setattr(flat, "CPU_PATH_DEVICES", devices)
        results.append(prune(model, method="iter-snip", sparsity=0.95, steps=5, stream=FixedStream(batches),
                             **settings).masks)
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), name
