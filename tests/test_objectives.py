"""The saliency objectives, each method's default, and GraSP's sign, against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from force_cli.errors import ConfigError, UnknownNameError
from force_cli.pruning import prune
from force_cli.pruning.criteria import METHODS, get_method
from force_cli.pruning.loop import compute_scores, resolve_objective
from force_cli.pruning.objectives import Objective, make_objective
from tests.helpers import FixedStream


def logit_gradient(objective: Objective, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    z = logits.clone().requires_grad_(True)
    objective(z, targets).backward()
    return z.grad


def test_true_logit_gradient_is_minus_onehot_over_batch():
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0], [-2.0, 0.0, 4.0]], dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    grad = logit_gradient(Objective("true-logit"), z, y)
    expected = torch.zeros(4, 3, dtype=torch.float64)
    for i, c in enumerate([0, 2, 1, 2]):
        expected[i, c] = -1 / 4
    assert torch.equal(grad, expected)
    # and its value: minus the mean of 2.0, 1.0, 1.0, 4.0
    assert Objective("true-logit")(z, y).item() == pytest.approx(-2.0)


@pytest.mark.parametrize("temperature", [1.0, 200.0])
def test_cross_entropy_gradient_is_softmax_minus_onehot_over_batch_and_temperature(temperature):
    z = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([1, 1])
    grad = logit_gradient(Objective("cross-entropy", temperature), z, y)
    expected = torch.zeros(2, 3, dtype=torch.float64)
    for i in range(2):
        e = [math.exp(v / temperature) for v in z[i].tolist()]
        for j in range(3):
            expected[i, j] = (e[j] / sum(e) - (j == 1)) / (2 * temperature)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=0)


def test_each_method_defaults_to_its_reference_codes_objective():
    for name in ("force", "iter-snip", "grasp-it", "snip"):
        assert METHODS[name].objective == Objective("true-logit"), name
    assert METHODS["grasp"].objective == Objective("cross-entropy", 200.0)
    for name in ("synflow", "magnitude", "random"):
        assert METHODS[name].objective is None and resolve_objective(METHODS[name], "cross-entropy") is None


def test_objective_choice_rules():
    force, grasp = get_method("force"), get_method("grasp")
    assert resolve_objective(force) == Objective("true-logit")
    assert resolve_objective(force, "cross-entropy") == Objective("cross-entropy", 1.0)
    assert resolve_objective(force, None, 5.0) == Objective("cross-entropy", 5.0)  # T alone: cross-entropy
    assert resolve_objective(grasp, "cross-entropy") == Objective("cross-entropy", 200.0)  # keeps GraSP's T
    assert resolve_objective(grasp, "cross-entropy", 1.0) == Objective("cross-entropy", 1.0)
    assert resolve_objective(grasp, "true-logit") == Objective("true-logit")
    with pytest.raises(UnknownNameError, match="cross-entropy, true-logit"):
        make_objective("mse")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="positive"):
            make_objective("cross-entropy", bad)
    with pytest.raises(ConfigError, match="cross-entropy only"):
        make_objective("true-logit", 2.0)


def test_grasp_sign_on_a_two_weight_network_worked_by_hand():
    """z = (w1·x, w2·x) for one input x = 1, target class 0, L = CE(z) (T = 1).

    With d = w2 - w1 and σ = sigmoid(d): L = log(1 + e^d), g = (-σ, σ),
    H = σ(1-σ)·[[1, -1], [-1, 1]], so Hg = (-2σ²(1-σ), 2σ²(1-σ)) and
    θ ⊙ Hg = (-2·w1·σ²(1-σ), 2·w2·σ²(1-σ)). With w1 = 1, w2 = 0.5 the first is negative and the
    second positive: GraSP keeps the weight with the largest θ ⊙ Hg (removes the largest -θ ⊙ Hg),
    i.e. w2, and removes w1.
    """
    model = nn.Linear(1, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [0.5]]))
    batch = (torch.ones(1, 1, dtype=torch.float64), torch.tensor([0]))
    w1, w2 = 1.0, 0.5
    sigma = 1 / (1 + math.exp(-(w2 - w1)))
    expected = torch.tensor([[-2 * w1 * sigma**2 * (1 - sigma)], [2 * w2 * sigma**2 * (1 - sigma)]], dtype=torch.float64)
    scores = compute_scores(model, "grasp", stream=FixedStream([batch]), objective=Objective("cross-entropy"))
    torch.testing.assert_close(scores["weight"], expected, rtol=1e-10, atol=0)
    result = prune(model, method="grasp", sparsity=0.5, stream=FixedStream([batch]), saliency_loss="cross-entropy",
                   saliency_temperature=1.0)
    assert result.masks["weight"].flatten().tolist() == [False, True]


def test_the_objective_changes_the_scores_and_is_reported():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g))
    paper = compute_scores(model, "snip", stream=FixedStream([batch]))
    ce = compute_scores(model, "snip", stream=FixedStream([batch]), objective=Objective("cross-entropy"))
    assert not torch.allclose(paper["0.weight"], ce["0.weight"])
    result = prune(model, method="snip", sparsity=0.5, stream=FixedStream([batch]))
    assert result.objective == Objective("true-logit")


def test_a_registered_criterion_without_an_objective_uses_cross_entropy():
    from force_cli.pruning.criteria import Method, connection_sensitivity

    custom = Method("custom-test", connection_sensitivity, "a user's criterion")
    assert resolve_objective(custom) == Objective("cross-entropy", 1.0)
    assert resolve_objective(custom, None, 4.0) == Objective("cross-entropy", 4.0)
