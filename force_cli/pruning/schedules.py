"""Density schedules for iterative pruning: how many weights are kept after each step.

With ρ = 1 - s the final density and T steps:
  exp:    ρ_t = ρ^(t/T)          (the paper's default: remove a constant fraction per step)
  linear: ρ_t = 1 - t(1-ρ)/T
The last step always lands on exactly ``k`` weights.
"""

from __future__ import annotations

from collections.abc import Callable

from force_cli.errors import ConfigError, UnknownNameError


def exp_density(final_density: float, t: int, steps: int) -> float:
    return final_density ** (t / steps)


def linear_density(final_density: float, t: int, steps: int) -> float:
    return 1.0 - t * (1.0 - final_density) / steps


SCHEDULES: dict[str, Callable[[float, int, int], float]] = {
    "exp": exp_density,
    "linear": linear_density,
}


def kept_counts(schedule: str, total: int, k: int, steps: int) -> list[int]:
    """Number of weights kept after each of ``steps`` steps, ending exactly at ``k``.

    Counts never increase and never go below ``k``.
    """
    if schedule not in SCHEDULES:
        raise UnknownNameError("schedule", schedule, SCHEDULES)
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    density = SCHEDULES[schedule]
    final = k / total
    counts = []
    previous = total
    for t in range(1, steps + 1):
        kt = k if t == steps else round(density(final, t, steps) * total)
        kt = min(previous, max(k, kt))
        counts.append(kt)
        previous = kt
    return counts
