"""The one pruning loop shared by every criterion: score, then keep the global top-k, per step."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from force_cli import distributed
from force_cli.errors import ConfigError
from force_cli.pruning import flat
from force_cli.pruning.budgets import check_budget, layer_counts
from force_cli.pruning.criteria import Batch, ScoringContext, score_function
from force_cli.pruning.masks import Masks, Scores, count_kept, dense_masks, kept_for_sparsity, prunable_weights
from force_cli.pruning.methods import get_method, resolve_objective
from force_cli.pruning.objectives import Objective
from force_cli.pruning.schedules import kept_counts
from force_cli.pruning.select import exclude_pruned_, select
from force_cli.pruning.ties import check_tie_rule
from force_cli.pruning.topk import Workspace


@dataclass(frozen=True)
class StepInfo:
    """Reported after each pruning step (for progress bars and logs)."""

    step: int
    steps: int
    kept: int
    total: int
    # The lowest score kept (the kept-th largest); None when the step kept every weight. When it is
    # 0 or not finite, the scores could not rank all the weights this step needed: the last ones
    # were picked by position among equal, uninformative scores, not by the criterion.
    threshold: float | None = None
    masks: Masks = field(repr=False, compare=False, default_factory=dict)  # after this step; only in on_step

    @property
    def density(self) -> float:
        return self.kept / self.total

    @property
    def unranked(self) -> bool:
        return self.threshold is not None and (self.threshold == 0 or not math.isfinite(self.threshold))


@dataclass
class PruneResult:
    masks: Masks  # on CPU, bool
    total: int
    kept: int
    steps: int
    history: list[StepInfo] = field(default_factory=list)
    objective: Objective | None = None  # the saliency objective used (None: data-free method)
    warnings: list[str] = field(default_factory=list)  # for the user; the job adds connectivity ones

    @property
    def sparsity(self) -> float:
        return 1.0 - self.kept / self.total

    @property
    def unranked_steps(self) -> list[int]:
        """Steps whose scores could not rank all the weights they kept (see ``StepInfo.threshold``)."""
        return [info.step for info in self.history if info.unranked]


class _BatchSource:
    """Adapts anything with ``take(n)`` (e.g. data.BatchStream) to "next n batches on this device".

    Under torchrun every rank draws the same n batches of the seeded stream and keeps every
    ``world_size``-th one (from its rank on), so the ranks together score exactly the batches of a
    single-process run with the same ``--batches``.
    """

    def __init__(self, stream, num_batches: int, device: torch.device, rank: int = 0, world_size: int = 1):
        self.stream, self.num_batches, self.device = stream, num_batches, device
        self.rank, self.world_size = rank, world_size

    def __call__(self) -> list[Batch]:
        nb = self.device.type == "cuda"
        return [(x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb))
                for i, (x, y) in enumerate(self.stream.take(self.num_batches))
                if i % self.world_size == self.rank]


def scoring_context(model: nn.Module, *, stream=None, num_batches: int = 1,
                    input_shape: tuple[int, ...] | None = None, seed: int = 0,
                    objective: Objective | None = None) -> ScoringContext:
    """A context over one private copy of ``model`` for a whole run: the caller's weights and
    batch-norm statistics stay untouched, and no step copies the network again. θ0 is read from
    the caller's own weights, which nothing here writes: a second copy would cost its memory and,
    on a CPU, a page fault per 4 KiB of it."""
    originals = {n: w.detach() for n, w in prunable_weights(model).items()}
    work = copy.deepcopy(model).train()
    weights = prunable_weights(work)
    prunable = set(map(id, weights.values()))
    for p in work.parameters():
        p.requires_grad_(id(p) in prunable)
    device = next(iter(weights.values())).device
    return ScoringContext(
        model=work,
        weights=weights,
        initial=originals,
        next_batches=_BatchSource(stream, num_batches, device, distributed.rank(), distributed.world_size())
        if stream is not None else None,
        input_shape=tuple(input_shape) if input_shape else (),
        generator=torch.Generator().manual_seed(seed),
        objective=objective,
        reduce_gradients=distributed.all_reduce_weighted_mean_ if distributed.active() else None,
        flat_weights=flat.FlatWeights(weights) if flat.takes_flat_path(device) else None,
    )


def compute_scores(model: nn.Module, method: str, masks: Masks | None = None, **context) -> Scores:
    """One step's raw scores of ``method`` for ``model`` at mask ``masks`` (default: dense).

    For analysis and tests; ``context`` takes the keyword arguments of ``scoring_context``.
    """
    spec = get_method(method)
    context.setdefault("objective", resolve_objective(spec))
    ctx = scoring_context(model, **context)
    masks = masks if masks is not None else dense_masks(model)
    return score_function(spec)(ctx, {n: m.to(ctx.initial[n].device) for n, m in masks.items()})


def prune(
    model: nn.Module,
    *,
    method: str = "force",
    sparsity: float,
    steps: int | None = None,
    schedule: str = "exp",
    stream=None,
    num_batches: int = 1,
    input_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    saliency_loss: str | None = None,
    saliency_temperature: float | None = None,
    budget: str = "global",
    ties: str = "exact",
    invert_scores: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
) -> PruneResult:
    """Compute pruning masks for ``model`` at initialization. Returns masks; never mutates ``model``.

    ``stream`` provides mini-batches through ``take(n)`` (needed by data-driven methods);
    ``input_shape`` (C, H, W) is needed by SynFlow. ``steps=None`` uses the method's default;
    one-shot methods always take one step. The model's current weights are θ0.
    ``saliency_loss`` / ``saliency_temperature`` override the method's objective
    (see ``resolve_objective``). ``budget`` (``budgets.py``) gives each layer its count before the
    scores rank within it (``global``: no budget). ``ties`` is the tie rule of ``ties.py``:
    ``exact`` keeps exactly each step's count, ``keep`` every weight tied at a step's threshold too.
    ``invert_scores`` keeps the lowest scores instead, at every step (a sanity check, ``ablation.py``).
    """
    spec = get_method(method)
    check_tie_rule(ties)
    check_budget(budget)
    if spec.needs_data and stream is None:
        raise ConfigError(f"method '{method}' needs training data to score weights; pass a dataset")
    if spec.needs_input_shape and not input_shape:
        raise ConfigError(f"method '{method}' needs the input shape (C, H, W) of one sample")
    if num_batches < 1:
        raise ConfigError(f"--batches must be at least 1, got {num_batches}")
    if spec.needs_data and num_batches < distributed.world_size():
        raise ConfigError(f"--batches {num_batches} leaves a rank without batches; under torchrun give at least "
                          f"the number of processes ({distributed.world_size()})")
    objective = resolve_objective(spec, saliency_loss, saliency_temperature)
    steps = spec.steps_for(steps)
    initial_masks = dense_masks(model)
    total = sum(m.numel() for m in initial_masks.values())
    if total == 0:
        raise ConfigError("the model has no prunable (Conv or Linear) weights")
    k = kept_for_sparsity(total, sparsity)
    counts = kept_counts(schedule, total, k, steps, density=1.0 - sparsity)
    layer_counts(budget, {n: tuple(m.shape) for n, m in initial_masks.items()}, k)  # refuse an impossible budget now

    ctx = scoring_context(model, stream=stream, num_batches=num_batches, input_shape=input_shape, seed=seed,
                          objective=objective)
    device = next(iter(ctx.weights.values())).device
    # a GPU's: few kernels and one read-back per step; per-layer budgets and kept ties select per layer
    flat_path = flat.takes_flat_path(device) and budget == "global" and ties == "exact"
    if flat_path:
        masks = flat.FlatMasks.dense({n: m.shape for n, m in initial_masks.items()}, device)
    else:
        masks = {n: m.to(device) for n, m in initial_masks.items()}
    history = []
    workspace = Workspace()
    score = score_function(spec)
    # pruned weights cannot come back, so under a budget no layer may be given more than it holds
    held = None if spec.revives or budget == "global" else {n: m.numel() for n, m in initial_masks.items()}
    for t, kt in enumerate(counts, start=1):
        scores = score(ctx, masks)
        if invert_scores:
            torch._foreach_neg_(list(scores.values()))
        if flat_path:
            masks, threshold = flat.keep_top_k(scores, kt, pruned=None if spec.revives else masks,
                                               weights=ctx.flat_weights)
        else:
            if not spec.revives:
                exclude_pruned_(scores, masks, ties)
            masks, threshold = select(scores, kt, budget=budget, ties=ties, capacities=held, workspace=workspace)
            if held is not None or ties == "keep":  # each layer's count, read back once for both uses
                layer_kept = dict(zip(masks, torch.stack([m.sum() for m in masks.values()]).tolist()))
                held = layer_kept if held is not None else None
        kept = kt if ties == "exact" else sum(layer_kept.values())
        info = StepInfo(step=t, steps=steps, kept=kept, total=total, threshold=threshold)
        history.append(info)
        if on_step is not None:
            on_step(dataclasses.replace(info, masks=masks))
    masks = masks.to_cpu() if flat_path else {n: m.cpu() for n, m in masks.items()}
    distributed.check_identical(list(masks.values()), "pruning masks")
    return PruneResult(masks=masks, total=total, kept=count_kept(masks), steps=steps, history=history,
                       objective=objective)
