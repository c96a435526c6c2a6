"""NTK-SAP and ProsPr against hand computations: a closed form on a linear network, and an
independent plain implementation (first order) or finite differences (full meta-gradient)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from force_cli.errors import ConfigError
from force_cli.pruning import get_method, prune
from force_cli.pruning.criteria import NTK_SAP_EPSILON, PROSPR_LR, PROSPR_STEPS, ntk_sap_mask_gradient, prospr
from force_cli.pruning.loop import compute_scores, scoring_context
from force_cli.pruning.masks import dense_masks
from tests.helpers import FixedStream, random_batches, tiny_convnet, tiny_mlp


# --------------------------------------------------------------------------- NTK-SAP


def test_ntk_sap_mask_gradient_matches_the_closed_form_of_a_two_layer_linear_network():
    """f(x) = A2 A1 x with A_l = θ_l ⊙ c_l, f' the same with B_l = (θ_l + εΔ_l) ⊙ c_l, D = f - f'.
    R = ‖D‖² over the batch, so (rows are samples, H = X A1ᵀ, H' = X B1ᵀ):
      ∂R/∂A2 = 2 Dᵀ H,  ∂R/∂B2 = -2 Dᵀ H',  ∂R/∂A1 = 2 (D A2)ᵀ X,  ∂R/∂B1 = -2 (D B2)ᵀ X,
      ∂R/∂c_l = ∂R/∂A_l ⊙ θ_l + ∂R/∂B_l ⊙ (θ_l + εΔ_l)."""
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False)).double()
    theta = {"0.weight": torch.randn(3, 4, generator=g, dtype=torch.float64),
             "1.weight": torch.randn(2, 3, generator=g, dtype=torch.float64)}
    delta = {n: torch.randn(t.shape, generator=g, dtype=torch.float64) for n, t in theta.items()}
    masks = {"0.weight": torch.rand(3, 4, generator=g) > 0.3, "1.weight": torch.rand(2, 3, generator=g) > 0.3}
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    eps = 0.3  # any ε: the identity is exact

    t1, t2 = theta["0.weight"], theta["1.weight"]
    p1, p2 = t1 + eps * delta["0.weight"], t2 + eps * delta["1.weight"]
    a1, a2 = t1 * masks["0.weight"], t2 * masks["1.weight"]
    b1, b2 = p1 * masks["0.weight"], p2 * masks["1.weight"]
    h, h_moved = x @ a1.T, x @ b1.T
    d = h @ a2.T - h_moved @ b2.T
    expected = {
        "1.weight": 2 * d.T @ h * t2 - 2 * d.T @ h_moved * p2,
        "0.weight": 2 * (d @ a2).T @ x * t1 - 2 * (d @ b2).T @ x * p1,
    }
    got = ntk_sap_mask_gradient(model, masks, theta, delta, x, eps)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12)


def test_ntk_sap_redraws_the_weights_so_only_their_scale_matters():
    model = tiny_mlp(seed=3)
    scores = compute_scores(model, "ntk-sap", input_shape=(6,), seed=7)
    negated = tiny_mlp(seed=3)
    with torch.no_grad():
        for m in negated:
            if isinstance(m, nn.Linear):
                m.weight.neg_()
    # same |θ0| per layer, so the same draws: the scores do not look at θ0 itself
    again = compute_scores(negated, "ntk-sap", input_shape=(6,), seed=7)
    for name in scores:
        assert torch.equal(scores[name], again[name])
    other_seed = compute_scores(model, "ntk-sap", input_shape=(6,), seed=8)
    assert any(not torch.equal(scores[n], other_seed[n]) for n in scores)
    # a step with some weights pruned scores them 0
    masks = dense_masks(model)
    masks["0.weight"][0] = False
    pruned = compute_scores(model, "ntk-sap", masks=masks, input_shape=(6,), seed=7)
    assert (pruned["0.weight"][0] == 0).all() and (pruned["0.weight"][1:] > 0).all()


def test_ntk_sap_prunes_data_free_with_batch_norm_and_leaves_the_model_alone():
    model = tiny_convnet(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = prune(model, method="ntk-sap", sparsity=0.8, input_shape=(3, 8, 8), seed=0)
    assert result.steps == get_method("ntk-sap").default_steps == 20
    assert result.kept == round(0.2 * result.total)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model.training
    assert NTK_SAP_EPSILON == 0.01


# --------------------------------------------------------------------------- ProsPr


def _forward(params, x):
    w1, b1, w2, b2 = params
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


def _plain_sgd(params, x, y, steps):
    """``steps`` plain SGD steps on cross-entropy; gradients of each step detached (first order)."""
    for _ in range(steps):
        leaves = [p.detach().requires_grad_(True) for p in params]
        grads = torch.autograd.grad(F.cross_entropy(_forward(leaves, x), y), leaves)
        params = [p.detach() - PROSPR_LR * g for p, g in zip(params, grads)]
    return params


def _model_params(model):
    return [model[0].weight.detach(), model[0].bias.detach(), model[2].weight.detach(), model[2].bias.detach()]


def test_prospr_first_order_is_the_gradient_after_the_inner_steps_times_theta0():
    model = tiny_mlp(seed=4)
    (batch,) = random_batches(1, 8, 6, 3, seed=5, dtype=torch.float64)
    x, y = batch
    params = _plain_sgd(_model_params(model), x, y, PROSPR_STEPS)
    leaves = [p.requires_grad_(True) for p in params]
    gw1, _, gw2, _ = torch.autograd.grad(F.cross_entropy(_forward(leaves, x), y), leaves)
    expected = {"0.weight": (gw1 * model[0].weight).abs(), "2.weight": (gw2 * model[2].weight).abs()}
    got = compute_scores(model, "prospr", stream=FixedStream([batch]))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name].detach(), rtol=1e-9, atol=1e-12)


def test_prospr_full_meta_gradient_matches_finite_differences():
    model = tiny_mlp(seed=6)
    (batch,) = random_batches(1, 8, 6, 3, seed=7, dtype=torch.float64)
    x, y = batch
    w1, b1, w2, b2 = _model_params(model)

    def meta_loss(c1, c2):
        params = _plain_sgd([w1 * c1, b1, w2 * c2, b2], x, y, PROSPR_STEPS)
        return float(F.cross_entropy(_forward(params, x), y))

    h = 1e-6
    expected = {"0.weight": torch.zeros_like(w1), "2.weight": torch.zeros_like(w2)}
    for name, shape in (("0.weight", w1.shape), ("2.weight", w2.shape)):
        for i in range(shape.numel()):
            bump = torch.zeros(shape.numel(), dtype=torch.float64)
            bump[i] = h
            bump = bump.view(shape)
            ones1, ones2 = torch.ones_like(w1), torch.ones_like(w2)
            up = meta_loss(ones1 + bump, ones2) if name == "0.weight" else meta_loss(ones1, ones2 + bump)
            down = meta_loss(ones1 - bump, ones2) if name == "0.weight" else meta_loss(ones1, ones2 - bump)
            expected[name].view(-1)[i] = abs(up - down) / (2 * h)
    full = compute_scores(model, "prospr-full", stream=FixedStream([batch]))
    first = compute_scores(model, "prospr", stream=FixedStream([batch]))
    for name in expected:
        torch.testing.assert_close(full[name], expected[name], rtol=1e-5, atol=1e-8)
    # the first-order approximation is a different score (so the option does something)
    assert any(not torch.allclose(first[n], full[n], rtol=1e-3) for n in full)


def test_prospr_uses_cross_entropy_by_default_and_prunes_one_shot():
    spec = get_method("prospr")
    assert not spec.iterative and spec.objective.name == "cross-entropy"
    model = tiny_convnet(seed=2)
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,)))]
    result = prune(model, method="prospr", sparsity=0.7, stream=FixedStream(batches))
    assert result.steps == 1 and result.kept == round(0.3 * result.total)


def test_prospr_refuses_torchrun():
    model = tiny_mlp()
    ctx = scoring_context(model, stream=FixedStream(random_batches(1, 4, 6, 3, dtype=torch.float64)))
    ctx.reduce_gradients = lambda grads, n: None  # what scoring_context sets under torchrun
    with pytest.raises(ConfigError, match="torchrun"):
        prospr(ctx, dense_masks(model))


@pytest.mark.parametrize("method", ["ntk-sap", "prospr"])
def test_the_gpus_flat_path_prunes_the_new_methods_as_the_cpu_path(monkeypatch, method):
    from force_cli.pruning import flat

    batches = [(torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(i)), torch.tensor([0, 1, 2] * 2 + [0, 1]))
               for i in range(2)]
    results = []
    for devices in (flat.CPU_PATH_DEVICES, frozenset()):
        monkeypatch.setattr(flat, "CPU_PATH_DEVICES", devices)
        results.append(prune(tiny_convnet(seed=5), method=method, sparsity=0.8, steps=3, input_shape=(3, 8, 8),
                             stream=FixedStream(batches)).masks)
    assert all(torch.equal(results[0][n], results[1][n]) for n in results[0])
