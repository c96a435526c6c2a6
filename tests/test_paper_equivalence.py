"""force-cli's iterative methods give the same masks as the FORCE paper's algorithm.

The reference below re-computes the paper's algorithm (de Jorge et al., ICLR 2021, as its code
runs it) independently and plainly: a hand-written forward pass over a list of layers, per-layer
saliencies in Python loops, the paper code's objective (minus the mean true-class logit), its
schedules with ``int(N · ρ_t)`` weights kept at each intermediate step, and, for the methods that
never revive a weight, pruned weights' saliency pinned at the global minimum. Given the same
initial weights and the same batch at each step, the masks must be identical (the network is
smooth, so no two scores tie at a threshold; the reference checks that it kept exactly k_t).

Where two scores do tie exactly at a threshold (a network with two identical hidden units), the
masks are the paper code's under ``ties="keep"`` (its ``get_mask`` keeps every score ``>=`` the
threshold) and the position-ranked exact-count ones under the default ``ties="exact"``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from force_cli.pruning import prune
from force_cli.pruning.masks import kept_for_sparsity
from tests.helpers import FixedStream, random_batches

SIZES = (12, 40, 30, 5)  # inputs, two hidden layers, classes: 480 + 1200 + 150 = 1830 weights


def build_mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(SIZES, SIZES[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(SIZES) - 2:
            layers.append(nn.Tanh())
    model = nn.Sequential(*layers).double()
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


def forward(weights: list[torch.Tensor], biases: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = x
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = h @ w.T + b
        if i < len(weights) - 1:
            h = torch.tanh(h)
    return h


def paper_objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -sum(logits[i, int(y[i])] for i in range(len(y))) / len(y)


def paper_schedule(mode: str, pruning_factor: float, steps: int) -> list[float]:
    if mode == "exp":
        return [np.exp(0 - ((x + 1) * (0 - np.log(pruning_factor)) / steps)) for x in range(steps)]
    return [1 - ((x + 1) * (1 - pruning_factor) / steps) for x in range(steps)]


def reference_masks(model: nn.Sequential, method: str, sparsity: float, steps: int, batches, mode="exp",
                    count=int, ties=None, kept=None):
    """The paper's iterative pruning, re-computed plainly. Returns one 0/1 tensor per layer.

    ``count`` turns N · ρ_t into a number of weights: ``int`` as the paper's code does.
    ``ties``: None requires that no two scores tie at a threshold; ``"keep"`` keeps every score
    ``>=`` the threshold (the paper code's ``get_mask``); ``"exact"`` keeps exactly k_t, equal
    scores ranked by position (layer order, then row-major), pruned weights never chosen again
    by the methods that do not revive them. ``kept``, a list, receives each step's count."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    theta0 = [m.weight.detach().clone() for m in linears]
    biases = [m.bias.detach().clone() for m in linears]
    total = sum(w.numel() for w in theta0)
    k = kept_for_sparsity(total, sparsity)
    masks = [torch.ones_like(w) for w in theta0]
    for t, rho in enumerate(paper_schedule(mode, 1 - sparsity, steps)):
        keep = k if t == steps - 1 else count(total * rho)
        x, y = batches[t]
        current = [(w * m).requires_grad_(True) for w, m in zip(theta0, masks)]
        grads = torch.autograd.grad(paper_objective(forward(current, biases, x), y), current)
        saliency = []
        for layer in range(len(theta0)):
            g = grads[layer]
            if method == "force":
                s = (theta0[layer] * g).abs()  # the dense initial weight, at the sparsified point
            elif method == "iter-snip":
                s = (current[layer].detach() * g).abs()  # the pruned weight itself: 0 when pruned
            else:  # grasp-it: gradients of pruned weights are blocked
                s = (g * masks[layer]) ** 2
            saliency.append(s)
        if method != "force" and t > 0:
            lowest = float("-inf") if ties == "exact" else min(float(s.min()) for s in saliency)
            for layer in range(len(saliency)):
                saliency[layer] = torch.where(masks[layer] == 0, torch.full_like(saliency[layer], lowest),
                                              saliency[layer])
        values = [float(v) for s in saliency for v in s.flatten()]
        if ties == "exact":
            order = sorted(range(len(values)), key=lambda i: (-values[i], i))
            chosen = torch.zeros(len(values), dtype=torch.float64)
            chosen[order[:keep]] = 1.0
            masks = list(chosen.split([s.numel() for s in saliency]))
            masks = [m.view_as(s) for m, s in zip(masks, saliency)]
        else:
            flat = sorted(values, reverse=True)
            threshold = flat[keep - 1]
            if ties is None:
                assert flat[keep] < threshold, "tie at the threshold: choose another seed"
            masks = [(s >= threshold).double() for s in saliency]
        if kept is not None:
            kept.append(sum(int(m.sum()) for m in masks))
        if ties is None:
            assert sum(int(m.sum()) for m in masks) == keep
    return masks


@pytest.mark.parametrize("method", ["force", "iter-snip", "grasp-it"])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_masks_equal_the_papers_algorithm(method, steps):
    model = build_mlp(seed=steps)
    batches = random_batches(steps, 32, SIZES[0], SIZES[-1], seed=100 + steps, dtype=torch.float64)
    expected = reference_masks(model, method, 0.97, steps, batches)
    result = prune(model, method=method, sparsity=0.97, steps=steps, stream=FixedStream(batches))
    got = list(result.masks.values())
    for layer, (ours, theirs) in enumerate(zip(got, expected)):
        assert torch.equal(ours, theirs.bool()), f"layer {layer}: {int((ours != theirs.bool()).sum())} weights differ"


def test_linear_schedule_masks_equal_the_papers_algorithm():
    model = build_mlp(seed=5)
    batches = random_batches(6, 32, SIZES[0], SIZES[-1], seed=7, dtype=torch.float64)
    expected = reference_masks(model, "force", 0.95, 6, batches, mode="linear")
    result = prune(model, method="force", sparsity=0.95, steps=6, schedule="linear", stream=FixedStream(batches))
    for ours, theirs in zip(result.masks.values(), expected):
        assert torch.equal(ours, theirs.bool())


def test_rounding_instead_of_flooring_would_change_the_masks():
    """The equivalence above is sensitive: keeping one weight more at one step changes the result."""
    model = build_mlp(seed=10)
    batches = random_batches(10, 32, SIZES[0], SIZES[-1], seed=110, dtype=torch.float64)
    total = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    rho = paper_schedule("exp", 0.03, 10)
    assert [int(total * r) for r in rho[:-1]] != [round(total * r) for r in rho[:-1]]
    floored = reference_masks(model, "iter-snip", 0.97, 10, batches)
    rounded = reference_masks(model, "iter-snip", 0.97, 10, batches, count=round)
    assert any(not torch.equal(a, b) for a, b in zip(floored, rounded))
    ours = prune(model, method="iter-snip", sparsity=0.97, steps=10, stream=FixedStream(batches)).masks
    assert all(torch.equal(a, b.bool()) for a, b in zip(ours.values(), floored))


def build_twin_mlp(seed: int) -> nn.Sequential:
    """``build_mlp`` whose first two hidden units are identical: same incoming weights and bias,
    same outgoing weights. Their weights' scores are then equal in pairs, bit for bit."""
    model = build_mlp(seed)
    first, second = (m for m in model if isinstance(m, nn.Linear) and m.out_features != SIZES[-1])
    with torch.no_grad():
        first.weight[1] = first.weight[0]
        first.bias[1] = first.bias[0]
        second.weight[:, 1] = second.weight[:, 0]
    return model


# Seed 6, 10 steps: two twin weights' FORCE scores tie exactly at the threshold of step 3 (of 10),
# and nowhere else; seed 15, 10 steps: at step 2 for Iterative SNIP. Found by search.
TIED = {"force": (6, 10, 3), "iter-snip": (15, 10, 2)}


@pytest.mark.parametrize("method", sorted(TIED))
def test_a_tie_at_an_intermediate_step_follows_the_tie_rule(method):
    seed, steps, tied_step = TIED[method]
    model = build_twin_mlp(seed)
    batches = random_batches(steps, 32, SIZES[0], SIZES[-1], seed=100 + seed, dtype=torch.float64)
    total = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    counts = [int(total * r) for r in paper_schedule("exp", 0.03, steps)[:-1]] + [kept_for_sparsity(total, 0.97)]
    masks, kept = {}, {}
    for ties in ("keep", "exact"):
        kept[ties] = []
        expected = reference_masks(model, method, 0.97, steps, batches, ties=ties, kept=kept[ties])
        ours = []
        result = prune(model, method=method, sparsity=0.97, steps=steps, stream=FixedStream(batches), ties=ties,
                       on_step=lambda info: ours.append(info.kept))
        for layer, (got, theirs) in enumerate(zip(result.masks.values(), expected)):
            assert torch.equal(got, theirs.bool()), f"ties={ties}, layer {layer}: {int((got != theirs.bool()).sum())} differ"
        assert ours == kept[ties]
        masks[ties] = result.masks
    # the construction really ties at that step: the paper's rule keeps the twin too, once
    assert [k - c for k, c in zip(kept["keep"], counts)] == [int(t == tied_step) for t in range(1, steps + 1)]
    assert kept["exact"] == counts
    # and that one weight changes the final mask
    assert any(not torch.equal(masks["keep"][n], masks["exact"][n]) for n in masks["exact"])
