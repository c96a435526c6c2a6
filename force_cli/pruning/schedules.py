"""Density schedules for iterative pruning: how many weights are kept after each step.

With ρ = 1 - s the final density and T steps:
  exp:    ρ_t = ρ^(t/T)          (the paper's default: remove a constant fraction per step)
  linear: ρ_t = 1 - t(1-ρ)/T
Step t < T keeps ⌊N·ρ_t⌋ weights, as the FORCE paper's code does (``int(N * ρ_t)``); the last step
keeps exactly ``k``. This is not a detail: iterative pruning amplifies a one-weight difference at
any step, so rounding instead of flooring gives masks that share well under half their weights
with the paper code's after 10 steps, from the same weights and batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from force_cli.errors import ConfigError, UnknownNameError


def exp_density(final_density: float, t: int, steps: int) -> float:
    # exp(-t·(-log ρ)/T), evaluated in the order of the paper's code so that ⌊N·ρ_t⌋ agrees
    return math.exp(0 - (t * (0 - math.log(final_density)) / steps))


def linear_density(final_density: float, t: int, steps: int) -> float:
    return 1.0 - t * (1.0 - final_density) / steps


SCHEDULES: dict[str, Callable[[float, int, int], float]] = {
    "exp": exp_density,
    "linear": linear_density,
}


def kept_counts(schedule: str, total: int, k: int, steps: int, *, density: float | None = None) -> list[int]:
    """Number of weights kept after each of ``steps`` steps, ending exactly at ``k``.

    ``density`` is the target ρ = 1 - s the schedule interpolates to (default ``k / total``);
    step t < T keeps ⌊total·ρ_t⌋. Counts never increase and never go below ``k``.
    """
    if schedule not in SCHEDULES:
        raise UnknownNameError("schedule", schedule, SCHEDULES)
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    final = density if density is not None else k / total
    if not 0.0 < final <= 1.0:
        raise ConfigError(f"the target density must be in (0, 1], got {final}")
    density_at = SCHEDULES[schedule]
    counts = []
    previous = total
    for t in range(1, steps + 1):
        kt = k if t == steps else int(total * density_at(final, t, steps))
        kt = min(previous, max(k, kt))
        counts.append(kt)
        previous = kt
    return counts
