"""Pruning criteria: each one computes scores (higher = kept) and nothing else.

Thresholding, schedules and the iterative loop live in ``loop.py``. Adding a criterion is one
score function here plus one ``register`` line in ``methods.py`` (the registry, which names it).
The meaning of every score is the README's method table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from force_cli.errors import ConfigError
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


# --------------------------------------------------------------------------- NTK-SAP

#: NTK-SAP's settings, from its reference code (YiteWang/NTK-SAP, scripts/run.sh and main.py):
#: perturbation size ε, weight draws per pruning step (``--ntksap_R 5``), and Gaussian inputs per
#: draw (its pruning set: 10 samples per class, 100 on CIFAR-10). 20 steps is its CIFAR setting.
NTK_SAP_EPSILON = 0.01
NTK_SAP_DRAWS = 5
NTK_SAP_INPUTS = 100


@contextlib.contextmanager
def _statistics_of(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> Iterator[None]:
    """Eval mode, with every batch-norm layer's running statistics set to those of ``x`` at
    ``params`` (one forward pass in train mode with momentum 1, as NTK-SAP's code does); restored
    to train mode and the old momenta afterwards. The running statistics are the working copy's."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    try:
        if norms:
            for m in norms:
                m.reset_running_stats()
                m.momentum = 1.0
            model.train()
            with torch.no_grad():
                functional_call(model, params, (x,))
        model.eval()
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train()


def ntk_sap_mask_gradient(model: nn.Module, masks: Masks, theta: dict[str, torch.Tensor],
                          delta: dict[str, torch.Tensor], x: torch.Tensor, epsilon: float) -> dict[str, torch.Tensor]:
    """∂R/∂c at c = ``masks``, R = Σ_x ‖f(x; θ ⊙ c) − f(x; (θ + εΔ) ⊙ c)‖², for the prunable
    weights named in ``theta`` (the model's other parameters and buffers as they are).

    R is NTK-SAP's finite-difference estimate of the trace of the network's neural tangent kernel
    on ``x``; batch norm uses the statistics of ``x`` at θ ⊙ c, in eval mode, for both outputs.
    """
    c = {n: masks[n].to(theta[n].dtype).requires_grad_(True) for n in theta}
    with _statistics_of(model, {n: theta[n] * masks[n] for n in theta}, x):
        clean = functional_call(model, {n: theta[n] * c[n] for n in theta}, (x,))
        moved = functional_call(model, {n: (theta[n] + epsilon * delta[n]) * c[n] for n in theta}, (x,))
        r = (clean - moved).square().sum()
    return dict(zip(c, torch.autograd.grad(r, list(c.values()))))


def ntk_sap(ctx: ScoringContext, masks: Masks) -> Scores:
    """|c ⊙ Σ_draws ∂R/∂c| (``ntk_sap_mask_gradient``): NTK-SAP (Wang et al., ICLR 2023), data-free.

    Every draw takes fresh weights θ (each layer Gaussian at the root-mean-square of its θ0, the
    scale of the run's initialisation), a fresh perturbation Δ ~ N(0, 1) and fresh Gaussian
    inputs, all from the run's seeded generator: the score ranks connections by their effect on
    the NTK's spectrum over initialisations, not at θ0 itself. Pruned weights score 0.
    """
    if "ntk-sap" not in ctx.cache:
        ctx.cache["ntk-sap"] = {n: theta.square().mean().sqrt() for n, theta in ctx.initial.items()}
    scale = ctx.cache["ntk-sap"]
    first = next(iter(ctx.initial.values()))

    def gaussian(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=ctx.generator, dtype=first.dtype).to(first.device)

    total: dict[str, torch.Tensor] = {}
    for _ in range(NTK_SAP_DRAWS):
        theta = {n: gaussian(tuple(t.shape)).mul_(scale[n]) for n, t in ctx.initial.items()}
        delta = {n: gaussian(tuple(t.shape)) for n, t in ctx.initial.items()}
        x = gaussian((NTK_SAP_INPUTS, *ctx.input_shape))
        for n, g in ntk_sap_mask_gradient(ctx.model, masks, theta, delta, x, NTK_SAP_EPSILON).items():
            total[n] = total[n].add_(g) if n in total else g
    return {n: g.mul_(masks[n]).abs_() for n, g in total.items()}


# --------------------------------------------------------------------------- ProsPr

#: ProsPr's settings, from its reference code's defaults (mil-ad/prospr, cli.py): inner SGD steps,
#: their learning rate and momentum (0; ``functional_sgd`` without momentum state); the inner
#: steps and the meta-loss all use the same mini-batches (``--new-data-in-inner`` off).
PROSPR_STEPS = 3
PROSPR_LR = 0.1


def prospr_meta_gradient(model: nn.Module, initial: dict[str, torch.Tensor], masks: Masks, batches: list[Batch],
                         objective: Callable, *, steps: int = PROSPR_STEPS, lr: float = PROSPR_LR,
                         full: bool = False) -> dict[str, torch.Tensor]:
    """∂L(θ_M)/∂c at c = ``masks``: θ_0 = θ0 ⊙ c for the prunable weights (``initial``), the model's
    own values for its other parameters; θ_{i+1} = θ_i − lr ∇L(θ_i); L averaged over ``batches``.

    ``full`` differentiates through the inner steps (second derivatives, memory for every step's
    graph); otherwise the first-order approximation ∂θ_M/∂θ_0 ≈ I, i.e. ∇L(θ_M) ⊙ θ0.
    """
    c = {n: masks[n].to(initial[n].dtype).requires_grad_(True) for n in initial}
    fast = {name: initial[name] * c[name] if name in c else p.detach().clone().requires_grad_(True)
            for name, p in model.named_parameters()}

    def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(objective(functional_call(model, params, (x,)), y) for x, y in batches) / len(batches)

    for _ in range(steps):
        grads = torch.autograd.grad(loss(fast), list(fast.values()), create_graph=full)
        fast = {name: p - lr * g for (name, p), g in zip(fast.items(), grads)}
    return dict(zip(c, torch.autograd.grad(loss(fast), list(c.values()))))


def prospr(ctx: ScoringContext, masks: Masks, full: bool = False) -> Scores:
    """|∂L(θ_M)/∂c| after ``PROSPR_STEPS`` SGD steps from θ0 ⊙ c: ProsPr (Alizadeh et al., ICLR 2022),
    first order unless ``full``."""
    if ctx.reduce_gradients is not None:
        raise ConfigError("prospr takes SGD steps on the scoring batches, which torchrun would split between "
                          "processes; run `force prune --method prospr` without torchrun")
    grads = prospr_meta_gradient(ctx.model, ctx.initial, masks, ctx.next_batches(), ctx.objective, full=full)
    return {n: g.abs_() for n, g in grads.items()}


def prospr_full(ctx: ScoringContext, masks: Masks) -> Scores:
    """ProsPr with the full meta-gradient, through the inner SGD steps."""
    return prospr(ctx, masks, full=True)
