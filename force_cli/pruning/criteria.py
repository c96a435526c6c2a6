"""Pruning criteria: each one computes scores (higher = kept) and nothing else.

Thresholding, schedules and the iterative loop live in ``loop.py``. Adding a criterion is one
score function here plus one ``register`` line in ``methods.py`` (the registry, which names it).
The meaning of every score is the README's method table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from force_cli.pruning.flat import FlatWeights, takes_flat_path
from force_cli.pruning.masks import Masks, Scores
# the registry, re-exported for callers that import it from here
from force_cli.pruning.methods import METHODS, Method, get_method, register  # noqa: F401
from force_cli.pruning.objectives import Objective

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ScoringContext:
    """What a criterion may look at. Owned by one pruning run; ``model`` is a private working copy.

    ``initial`` holds θ0, the dense initial weights, which criteria read but never modify;
    ``next_batches`` returns the next ``--batches`` mini-batches of the seeded stream, on the
    model's device; ``objective`` is the loss whose gradients data-driven criteria score;
    ``input_shape`` is (C, H, W) of one sample (for data-free criteria).
    """

    model: nn.Module
    weights: dict[str, nn.Parameter]
    initial: dict[str, torch.Tensor]
    next_batches: Callable[[], list[Batch]] | None
    input_shape: tuple[int, ...]
    generator: torch.Generator
    objective: Objective | None = None
    #: Under torchrun: turns this rank's gradients averaged over its ``n`` batches, in place, into
    #: the average over every rank's batches (set by ``loop.scoring_context``; None otherwise).
    reduce_gradients: Callable[[list[torch.Tensor], int], None] | None = None
    #: On the flat (GPU) path: ``weights`` as views of one buffer (see ``flat.py``); None on the CPU.
    flat_weights: FlatWeights | None = None
    cache: dict = field(default_factory=dict)


ScoreFn = Callable[[ScoringContext, Masks], Scores]


def score_function(method: Method) -> ScoreFn:
    """The function that scores for ``method``: its own, or the one of this module it names."""
    return method.score if callable(method.score) else globals()[method.score]


# --------------------------------------------------------------------------- shared gradient code


@torch.no_grad()
def load_masked_initial(ctx: ScoringContext, masks: Masks) -> None:
    """Set the working model's prunable weights to θ0 ⊙ c (in place: no copies of the network)."""
    if ctx.flat_weights is not None and ctx.flat_weights.fits(masks):
        ctx.flat_weights.load([ctx.initial[n] for n in ctx.weights], masks)  # two operations, not two per layer
        return
    for name, w in ctx.weights.items():
        # via uint8: bool -> float conversion is ~25x slower on CPU; the product is bit-identical
        w.data.copy_(masks[name].view(torch.uint8)).mul_(ctx.initial[name])


def _loss(ctx: ScoringContext, batch: Batch) -> torch.Tensor:
    x, y = batch
    return ctx.objective(ctx.model(x), y)


def average_gradients(ctx: ScoringContext, batches: list[Batch]) -> dict[str, torch.Tensor]:
    """∇L w.r.t. each prunable weight at the model's current weights, averaged over ``batches``."""
    for w in ctx.weights.values():
        w.grad = None
    for batch in batches:
        _loss(ctx, batch).backward()
    if len(batches) > 1:
        torch._foreach_div_([w.grad for w in ctx.weights.values()], len(batches))
    if ctx.reduce_gradients is not None:
        ctx.reduce_gradients([w.grad for w in ctx.weights.values()], len(batches))
    return {name: w.grad for name, w in ctx.weights.items()}


def masked_gradients(ctx: ScoringContext, masks: Masks) -> dict[str, torch.Tensor]:
    """∇L(θ0 ⊙ c), averaged over the next mini-batches of the stream."""
    load_masked_initial(ctx, masks)
    return average_gradients(ctx, ctx.next_batches())


# --------------------------------------------------------------------------- criteria


def connection_sensitivity(ctx: ScoringContext, masks: Masks) -> Scores:
    """|θ0 ⊙ ∇L(θ0 ⊙ c)|: FORCE's foresight saliency; SNIP's when c = 1; Iterative SNIP's on kept weights."""
    grads = masked_gradients(ctx, masks)  # fresh tensors owned by this step: transform in place
    values = list(grads.values())
    if not takes_flat_path(values[0].device):  # CPU: both passes over a layer while it is in the cache
        return {name: g.mul_(ctx.initial[name]).abs_() for name, g in grads.items()}  # (VGG-19: 19 vs 31 ms)
    torch._foreach_mul_(values, [ctx.initial[name] for name in grads])  # a GPU: one launch, not one per layer
    torch._foreach_abs_(values)
    return grads


def squared_gradient(ctx: ScoringContext, masks: Masks) -> Scores:
    """(∇L(θ ⊙ c))²: GraSP-It, the reference code's gradient-norm approximation."""
    grads = masked_gradients(ctx, masks)
    values = list(grads.values())
    if not takes_flat_path(values[0].device):
        return {name: g.square_() for name, g in grads.items()}
    torch._foreach_mul_(values, values)  # g * g, what square_ computes, in one launch
    return grads


def grasp(ctx: ScoringContext, masks: Masks) -> Scores:
    """θ ⊙ Hg with g = ∇L(θ): GraSP keeps the weights whose -θ ⊙ Hg is smallest, i.e. this is largest.

    Hg is a Hessian-gradient product: the gradient of (g_detached · ∇L) w.r.t. θ, on the same batches.
    """
    load_masked_initial(ctx, masks)
    batches = ctx.next_batches()
    g = {name: grad.clone() for name, grad in average_gradients(ctx, batches).items()}
    names = list(ctx.weights)
    params = [ctx.weights[n] for n in names]
    for w in params:
        w.grad = None
    for batch in batches:
        grads = torch.autograd.grad(_loss(ctx, batch), params, create_graph=True)
        dot = sum((g[n] * gr).sum() for n, gr in zip(names, grads))
        dot.backward()
    hg = [ctx.weights[n].grad.div_(len(batches)) for n in names]
    if ctx.reduce_gradients is not None:
        ctx.reduce_gradients(hg, len(batches))
    return {n: h.mul_(ctx.initial[n]) for n, h in zip(names, hg)}


def _synflow_model(ctx: ScoringContext) -> nn.Module:
    """The working copy, linearised once: float64 (products of |θ| overflow float32 on deep nets),
    every parameter and buffer made non-negative, eval mode (data-free, batch of one)."""
    if "synflow" not in ctx.cache:
        model = ctx.model.double().eval()
        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.abs_()
        ctx.cache["synflow"] = {n: ctx.initial[n].double().abs() for n in ctx.weights}
    return ctx.model


def synflow(ctx: ScoringContext, masks: Masks) -> Scores:
    """|θ ⊙ ∂R/∂θ| with R = Σ f_|θ⊙c|(1): Tanaka et al.'s synaptic flow, computed without data."""
    model = _synflow_model(ctx)
    abs_initial = ctx.cache["synflow"]
    with torch.no_grad():
        for name, w in ctx.weights.items():
            torch.mul(abs_initial[name], masks[name], out=w.data)
            w.grad = None
    ones = torch.ones((1, *ctx.input_shape), dtype=torch.float64, device=next(model.parameters()).device)
    model(ones).sum().backward()
    return {name: (w.grad * w.detach()).abs_() for name, w in ctx.weights.items()}


def magnitude(ctx: ScoringContext, masks: Masks) -> Scores:
    """|θ0|."""
    return {name: theta.abs() for name, theta in ctx.initial.items()}


def uniform_random(ctx: ScoringContext, masks: Masks) -> Scores:
    """Uniform random scores from the run's seeded generator: global random pruning."""
    return {
        name: torch.rand(theta.shape, generator=ctx.generator).to(theta.device)
        for name, theta in ctx.initial.items()
    }
