"""Per-layer budgets (``--budget``): how many of a step's ``k`` kept weights each layer holds.

- ``global`` (default): no budget; one top-k over all layers, so the scores set each layer's density.
- ``uniform``: every layer keeps the same fraction, k / N.
- ``uniform-plus`` (Gale et al., *The State of Sparsity in Deep Neural Networks*, 2019): the first
  layer stays dense, the last keeps at least 20 % of its weights, the others share the rest uniformly.
- ``erk`` (Erdős–Rényi-Kernel; Evci et al., *Rigging the Lottery*, ICML 2020): a layer of shape
  (n_out, n_in, k_h, k_w) has density ε · (n_out + n_in + k_h + k_w) / (n_out · n_in · k_h · k_w)
  (for a Linear layer, the sum and product of its two dimensions), one ε for all layers. A layer
  whose density would exceed 1 is made dense and ε is solved again for the others, the layer with
  the largest raw density first, as rigl's and jaxpruner's ``sparsity_distributions`` do.

Every budget gives integer counts that sum to exactly ``k``: each layer's real-valued share is
rounded down, and the weights left over go to the layers with the largest fractional parts (then
the earlier layer). Within a layer, the scores choose which weights (``select.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

from force_cli.errors import ConfigError, UnknownNameError

Shapes = Mapping[str, tuple[int, ...]]

#: Last-layer density floor of ``uniform-plus`` (Gale et al.: "at most 80 % sparse").
UNIFORM_PLUS_LAST_DENSITY = 0.2


def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def uniform_densities(shapes: Shapes, k: int) -> dict[str, float]:
    total = sum(_numel(s) for s in shapes.values())
    return dict.fromkeys(shapes, k / total)


def uniform_plus_densities(shapes: Shapes, k: int) -> dict[str, float]:
    names = list(shapes)
    sizes = {n: _numel(s) for n, s in shapes.items()}
    total = sum(sizes.values())
    first, last, middle = names[0], names[-1], names[1:-1]
    if len(names) == 1:
        if k < total:
            raise ConfigError("--budget uniform-plus keeps the first layer dense, and this model has only one "
                              "prunable layer; use --budget global, uniform or erk")
        return {first: 1.0}
    floor = UNIFORM_PLUS_LAST_DENSITY * sizes[last]
    if k < sizes[first] + floor:
        lowest = sizes[first] + math.ceil(floor)
        raise ConfigError(f"--budget uniform-plus keeps the first layer '{first}' dense and the last at least "
                          f"{UNIFORM_PLUS_LAST_DENSITY:.0%} dense, {lowest} weights, more than the {k} this sparsity "
                          f"keeps; use a sparsity of at most {1 - lowest / total:.4g} or --budget erk")
    rest = k - sizes[first]
    density = rest / (total - sizes[first])
    if density >= UNIFORM_PLUS_LAST_DENSITY:
        return {first: 1.0, **dict.fromkeys(names[1:], density)}
    # only with middle layers: without them the last layer's density would be rest / its size >= the floor
    middle_density = (rest - floor) / sum(sizes[n] for n in middle)
    return {first: 1.0, **dict.fromkeys(middle, middle_density), last: UNIFORM_PLUS_LAST_DENSITY}


def erk_raw_density(shape: tuple[int, ...]) -> float:
    """(sum of the dimensions) / (product of the dimensions): ERK's density before scaling by ε."""
    return sum(shape) / _numel(shape)


def erk_densities(shapes: Shapes, k: int) -> dict[str, float]:
    sizes = {n: _numel(s) for n, s in shapes.items()}
    if k >= sum(sizes.values()):
        return dict.fromkeys(shapes, 1.0)
    raw = {n: erk_raw_density(s) for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        sparse = [n for n in shapes if n not in dense]
        epsilon = (k - sum(sizes[n] for n in dense)) / sum(raw[n] * sizes[n] for n in sparse)
        over = [n for n in sparse if epsilon * raw[n] > 1.0]
        if not over:
            break
        largest = max(raw[n] for n in over)
        dense.update(n for n in over if raw[n] == largest)
    return {n: 1.0 if n in dense else epsilon * raw[n] for n in shapes}


class Budget(NamedTuple):
    densities: Callable[[Shapes, int], dict[str, float]] | None  # None: global ranking, no budget
    help: str  # one line, for --help


#: The budget registry: name -> per-layer densities for ``k`` kept weights, and a line of help.
BUDGETS: dict[str, Budget] = {
    "global": Budget(None, "one top-k over all layers (the scores set each layer's density)"),
    "uniform": Budget(uniform_densities, "the same density in every layer"),
    "uniform-plus": Budget(uniform_plus_densities,
                           "first layer dense, last layer at least 20 % dense, the others uniform (Gale et al. 2019)"),
    "erk": Budget(erk_densities,
                  "Erdős–Rényi-Kernel densities, layers over 1 made dense and the rest re-solved (Evci et al. 2020)"),
}


def check_budget(name: str) -> str:
    if name not in BUDGETS:
        raise UnknownNameError("budget", name, BUDGETS)
    return name


def apportion(quotas: Mapping[str, float], capacities: Mapping[str, int], k: int) -> dict[str, int]:
    """Integer counts summing to exactly ``k``, each at most its capacity, close to ``quotas``.

    Largest remainders: every layer gets its quota rounded down (capped), and the weights left over
    go one each to the layers with the largest fractional parts, then the earlier layer; a layer's
    capacity caps it, and what it cannot hold goes on to the layers with room, in the same order.
    """
    if k > sum(capacities.values()):
        raise ConfigError(f"cannot keep {k} weights in layers that hold {sum(capacities.values())}")
    names = list(quotas)
    counts = {n: max(0, min(capacities[n], math.floor(quotas[n]))) for n in names}
    by_fraction = sorted(names, key=lambda n: (-(quotas[n] - math.floor(quotas[n])), names.index(n)))
    left = k - sum(counts.values())
    while left > 0:
        for n in by_fraction:
            if left > 0 and counts[n] < capacities[n]:
                counts[n] += 1
                left -= 1
    while left < 0:  # float rounding put the floors above k: take back from the smallest fractions
        for n in reversed(by_fraction):
            if left < 0 and counts[n] > 0:
                counts[n] -= 1
                left += 1
    return counts


def layer_counts(budget: str, shapes: Shapes, k: int, capacities: Mapping[str, int] | None = None) -> dict[str, int] | None:
    """How many weights each layer keeps under ``budget`` for ``k`` in all; None for ``global``.

    ``capacities`` caps each layer (default: its size); the pruning loop passes the weights each
    layer still holds when pruned weights may not come back.
    """
    densities = BUDGETS[check_budget(budget)].densities
    if densities is None:
        return None
    sizes = {n: _numel(s) for n, s in shapes.items()}
    quotas = {n: min(1.0, d) * sizes[n] for n, d in densities(shapes, k).items()}
    caps = {n: min(sizes[n], capacities[n]) if capacities is not None else sizes[n] for n in sizes}
    return apportion(quotas, caps, k)
