"""Pruning at initialization: criteria (scores), schedules, the iterative loop and mask utilities.

    from force_cli.pruning import prune
    result = prune(model, method="force", sparsity=0.99, stream=batch_stream)

The names below load their submodule on first use (``force_cli.lazy``), so that the torch-free
modules (``methods``, ``objectives``, ``schedules``, ``checks``) import without torch.
"""

from force_cli.lazy import lazy_exports

_EXPORTS = {
    "METHODS": "methods", "Method": "methods", "get_method": "methods", "register": "methods",
    "PruneResult": "loop", "StepInfo": "loop", "prune": "loop",
    "Masks": "masks", "apply_masks_": "masks", "count_kept": "masks", "count_total": "masks",
    "dense_masks": "masks", "keep_top_k": "masks", "kept_for_sparsity": "masks",
    "prunable_weights": "masks", "validate_masks": "masks",
    "SCHEDULES": "schedules", "kept_counts": "schedules",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
