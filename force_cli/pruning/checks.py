"""The checks of `force prune`'s settings that need neither data, a model nor torch.

Kept apart from ``job.py`` so that the command line refuses an unknown name or an out-of-range
setting at once, before torch is loaded; ``prune_to_checkpoint`` runs the same checks first.
"""

from __future__ import annotations

from pathlib import Path

from force_cli.checkpoint.paths import pruned_output
from force_cli.config import PruneConfig
from force_cli.errors import ConfigError, UnknownNameError
from force_cli.models.names import INIT_NAMES, MODEL_NAMES, is_model_name
from force_cli.pruning.budgets import check_budget
from force_cli.pruning.methods import get_method, resolve_objective
from force_cli.pruning.schedules import SCHEDULES
from force_cli.pruning.ties import check_tie_rule


def default_output(cfg: PruneConfig) -> Path:
    return pruned_output(cfg.model, cfg.dataset, cfg.method, cfg.sparsity, cfg.seed)


def validate(cfg: PruneConfig) -> None:
    """Every check that needs neither data nor a model."""
    if cfg.model is None:
        raise ConfigError(f"no model given; pass --model (known models: {', '.join(sorted(MODEL_NAMES))})")
    if not is_model_name(cfg.model):
        raise UnknownNameError("model", cfg.model, MODEL_NAMES)
    resolve_objective(get_method(cfg.method), cfg.saliency_loss, cfg.saliency_temperature)
    if cfg.val_fraction is not None and not 0.0 <= cfg.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction {cfg.val_fraction} is outside [0, 1); give the fraction `train` holds out, e.g. 0.1")
    if cfg.schedule not in SCHEDULES:
        raise UnknownNameError("schedule", cfg.schedule, SCHEDULES)
    if cfg.init not in INIT_NAMES:
        raise UnknownNameError("init", cfg.init, INIT_NAMES)
    check_tie_rule(cfg.ties)
    check_budget(cfg.budget)
    if cfg.sparsity is None:
        raise ConfigError("no sparsity given; pass --sparsity, the fraction of weights to remove (e.g. 0.99)")
    if not 0.0 <= cfg.sparsity < 1.0:
        raise ConfigError(f"sparsity {cfg.sparsity} is outside [0, 1); give the fraction of weights to remove, e.g. 0.99")
    for name in ("batches", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.steps is not None and cfg.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {cfg.steps}")
