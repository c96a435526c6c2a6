"""Each criterion checked against an independent computation on a tiny network."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from force_cli.pruning import prune
from force_cli.pruning.loop import compute_scores
from force_cli.pruning.masks import prunable_weights
from tests.helpers import FixedStream, random_batches, tiny_mlp


def true_logit(z, y):
    """The paper code's objective, written out: minus the batch mean of the true-class logit."""
    return -z[torch.arange(len(y)), y].mean()


def cross_entropy_at(temperature):
    """Cross-entropy of softmax(z / T), through an explicit log-softmax."""
    return lambda z, y: -(z / temperature).log_softmax(dim=1)[torch.arange(len(y)), y].mean()


def loss_with_mask(model, masks_or_c, batches, objective=true_logit):
    """L(θ ⊙ c) averaged over batches, computed functionally (no in-place tricks)."""
    weights = prunable_weights(model)
    params = {n: p.detach() for n, p in model.named_parameters()}
    for n, c in masks_or_c.items():
        params[n] = weights[n].detach() * c
    losses = [objective(torch.func.functional_call(model, params, (x,)), y) for x, y in batches]
    return sum(losses) / len(losses)


def finite_difference_wrt_mask(model, c, batches, eps=1e-6, objective=true_logit):
    """∂L(θ ⊙ c)/∂c_i by central differences, one coordinate at a time."""
    out = {}
    for name, ci in c.items():
        d = torch.zeros_like(ci)
        for idx in itertools.product(*map(range, ci.shape)):
            plus = {k: v.clone() for k, v in c.items()}
            minus = {k: v.clone() for k, v in c.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            d[idx] = (loss_with_mask(model, plus, batches, objective)
                      - loss_with_mask(model, minus, batches, objective)) / (2 * eps)
        out[name] = d
    return out


def test_snip_score_is_the_loss_sensitivity_to_a_multiplicative_mask():
    model = tiny_mlp()
    batches = random_batches(2, 8, 6, 3, dtype=torch.float64)
    scores = compute_scores(model, "snip", stream=FixedStream(batches), num_batches=2)
    ones = {n: torch.ones_like(w, dtype=torch.float64) for n, w in prunable_weights(model).items()}
    fd = finite_difference_wrt_mask(model, ones, batches)
    for name in scores:
        torch.testing.assert_close(scores[name], fd[name].abs(), rtol=1e-5, atol=1e-9)


def test_force_score_is_the_mask_sensitivity_at_the_pruned_point_including_pruned_weights():
    model = tiny_mlp(seed=1)
    batches = random_batches(1, 8, 6, 3, seed=1, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    masks = {n: torch.rand(w.shape, generator=g) > 0.5 for n, w in prunable_weights(model).items()}
    scores = compute_scores(model, "force", masks, stream=FixedStream(batches))
    c = {n: m.double() for n, m in masks.items()}
    fd = finite_difference_wrt_mask(model, c, batches)
    for name in scores:
        torch.testing.assert_close(scores[name], fd[name].abs(), rtol=1e-5, atol=1e-9)
    # pruned weights get a real (non-zero) foresight score: that is what lets them come back
    pruned_scores = torch.cat([scores[n][~masks[n]] for n in scores])
    assert (pruned_scores > 0).any()


def test_grasp_hessian_gradient_product_matches_finite_difference_of_gradients():
    """With GraSP's default objective, cross-entropy at T = 200 (Wang et al.'s code)."""
    model = tiny_mlp(seed=2)
    batches = random_batches(2, 8, 6, 3, seed=2, dtype=torch.float64)
    scores = compute_scores(model, "grasp", stream=FixedStream(batches), num_batches=2)

    weights = prunable_weights(model)
    names = list(weights)

    def gradient_at(offset):
        params = {n: p.detach().clone() for n, p in model.named_parameters()}
        for n in names:
            params[n] = (params[n] + offset[n]).requires_grad_(True)
        losses = [cross_entropy_at(200.0)(torch.func.functional_call(model, params, (x,)), y) for x, y in batches]
        grads = torch.autograd.grad(sum(losses) / len(losses), [params[n] for n in names])
        return dict(zip(names, grads))

    g = gradient_at({n: 0.0 for n in names})
    eps = 1e-5
    plus = gradient_at({n: eps * g[n] for n in names})
    minus = gradient_at({n: -eps * g[n] for n in names})
    for n in names:
        hg = (plus[n] - minus[n]) / (2 * eps)
        torch.testing.assert_close(scores[n], weights[n].detach() * hg, rtol=1e-4, atol=1e-13)  # scores ~1e-7 at T=200


def test_grasp_it_score_is_the_squared_gradient_of_the_pruned_network():
    model = tiny_mlp(seed=4)
    batches = random_batches(1, 8, 6, 3, seed=4, dtype=torch.float64)
    masks = {n: torch.rand(w.shape, generator=torch.Generator().manual_seed(5)) > 0.3
             for n, w in prunable_weights(model).items()}
    scores = compute_scores(model, "grasp-it", masks, stream=FixedStream(batches))
    c = {n: m.double() for n, m in masks.items()}
    # ∂L/∂c = θ ⊙ ∂L/∂θ̄, so ∂L/∂θ̄ = fd / θ
    fd = finite_difference_wrt_mask(model, c, batches)
    for n, w in prunable_weights(model).items():
        torch.testing.assert_close(scores[n], (fd[n] / w.detach()) ** 2, rtol=1e-4, atol=1e-10)


def test_force_with_one_step_equals_snip():
    model = tiny_mlp(in_features=10, hidden=20, seed=6, dtype=torch.float32)
    batches = random_batches(3, 16, 10, 3, seed=6)
    force = prune(model, method="force", sparsity=0.8, steps=1, stream=FixedStream(batches), num_batches=3)
    snip = prune(model, method="snip", sparsity=0.8, stream=FixedStream(batches), num_batches=3)
    for n in force.masks:
        assert torch.equal(force.masks[n], snip.masks[n])


def _step_masks(method, steps=8):
    model = tiny_mlp(in_features=10, hidden=30, seed=7, dtype=torch.float32)
    stream = FixedStream(random_batches(8, 16, 10, 3, seed=7))
    seen = []
    prune(model, method=method, sparsity=0.95, steps=steps, stream=stream,
          on_step=lambda info: seen.append({n: m.clone() for n, m in info.masks.items()}))
    return seen


def _revived(seen):
    return sum(int((after[n] & ~before[n]).sum()) for before, after in zip(seen, seen[1:]) for n in before)


@pytest.mark.parametrize("method", ["iter-snip", "grasp-it"])
def test_non_reviving_methods_never_bring_a_weight_back(method):
    seen = _step_masks(method)
    assert len(seen) == 8
    assert _revived(seen) == 0


def test_force_does_bring_pruned_weights_back():
    assert _revived(_step_masks("force")) > 0


def test_synflow_scores_conserve_flow_layer_to_layer_on_a_plain_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 9, bias=False), nn.ReLU(), nn.Linear(9, 6, bias=False), nn.ReLU(),
                          nn.Linear(6, 4, bias=False))
    scores = compute_scores(model, "synflow", input_shape=(7,))
    totals = [float(scores[n].sum()) for n in scores]
    # every layer carries the whole synaptic flow R = 1ᵀ|W3||W2||W1|1
    w = [p.detach().double().abs() for p in prunable_weights(model).values()]
    flow = float(torch.ones(4, dtype=torch.float64) @ w[2] @ w[1] @ w[0] @ torch.ones(7, dtype=torch.float64))
    for total in totals:
        assert total == pytest.approx(flow, rel=1e-10)
    # and per neuron: flow in (incoming scores) equals flow out (outgoing scores)
    s = list(scores.values())
    torch.testing.assert_close(s[0].sum(dim=1), s[1].sum(dim=0))
    torch.testing.assert_close(s[1].sum(dim=1), s[2].sum(dim=0))


def test_magnitude_keeps_exactly_the_largest_weights():
    model = tiny_mlp(in_features=10, hidden=20, seed=8, dtype=torch.float32)
    result = prune(model, method="magnitude", sparsity=0.7)
    flat = torch.cat([w.detach().abs().flatten() for w in prunable_weights(model).values()])
    kept = torch.cat([m.flatten() for m in result.masks.values()])
    assert int(kept.sum()) == round(0.3 * flat.numel())
    assert flat[kept].min() > flat[~kept].max()


def test_random_pruning_is_seeded_and_roughly_uniform_across_layers():
    model = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 50))
    a = prune(model, method="random", sparsity=0.9, seed=1)
    b = prune(model, method="random", sparsity=0.9, seed=1)
    c = prune(model, method="random", sparsity=0.9, seed=2)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert not all(torch.equal(a.masks[n], c.masks[n]) for n in a.masks)
    for m in a.masks.values():
        assert 0.07 < m.float().mean() < 0.13


def test_pruning_leaves_the_callers_weights_and_batchnorm_buffers_untouched():
    from tests.helpers import tiny_convnet

    model = tiny_convnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(3)]
    for method in ("force", "grasp", "synflow"):
        prune(model, method=method, sparsity=0.5, steps=3, stream=FixedStream(batches), input_shape=(3, 6, 6))
    after = model.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert after["1.num_batches_tracked"] == 0
    assert next(model.parameters()).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_masked_initial_weights_are_bitwise_theta0_times_mask(dtype):
    from force_cli.pruning.criteria import load_masked_initial
    from force_cli.pruning.loop import scoring_context

    model = tiny_mlp(in_features=40, hidden=30, seed=9, dtype=dtype)
    ctx = scoring_context(model)
    g = torch.Generator().manual_seed(9)
    masks = {n: torch.rand(w.shape, generator=g) > 0.5 for n, w in ctx.weights.items()}
    ctx.initial["0.weight"][0, :3] = torch.tensor([-0.0, float("nan"), -1.5], dtype=dtype)
    load_masked_initial(ctx, masks)
    for n, w in ctx.weights.items():
        expected = ctx.initial[n] * masks[n]
        bits = torch.int32 if dtype == torch.float32 else torch.int64
        assert torch.equal(w.detach().view(bits), expected.view(bits))


@pytest.mark.parametrize("method", ["force", "iter-snip", "grasp-it", "snip", "grasp", "synflow", "magnitude"])
def test_pruning_leaves_the_callers_model_untouched(method):
    """θ0 is read from the caller's own weights (no copy): no criterion may write to them, to their
    gradients or to the batch-norm statistics."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune(model, method=method, sparsity=0.7, steps=3, stream=FixedStream(random_batches(2, 4, 6, 3, dtype=torch.float64)),
          input_shape=(6,))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
