"""Pruning at initialization: criteria (scores), schedules, the iterative loop and mask utilities.

    from force_cli.pruning import prune
    result = prune(model, method="force", sparsity=0.99, stream=batch_stream)
"""

from force_cli.pruning.criteria import METHODS, Method, get_method, register
from force_cli.pruning.loop import PruneResult, StepInfo, prune
from force_cli.pruning.masks import (
    Masks,
    apply_masks_,
    count_kept,
    count_total,
    dense_masks,
    keep_top_k,
    kept_for_sparsity,
    prunable_weights,
    validate_masks,
)
from force_cli.pruning.schedules import SCHEDULES, kept_counts

__all__ = [
    "METHODS", "Method", "get_method", "register", "PruneResult", "StepInfo", "prune", "Masks",
    "apply_masks_", "count_kept", "count_total", "dense_masks", "keep_top_k", "kept_for_sparsity",
    "prunable_weights", "validate_masks", "SCHEDULES", "kept_counts",
]
