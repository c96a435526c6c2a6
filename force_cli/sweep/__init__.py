"""`force sweep`: prune -> train -> eval for every method × sparsity × seed of a recipe; resumable.

One module per concern, as in ``pruning/`` and ``training/`` (each imports only those above it):

- ``results``: ``OUT/results.jsonl``, its reader and its writer, and each cell's key;
- ``plan``: the cells of a recipe's grid, each cell's prune settings, the checks that need no data;
- ``cell``: one cell, prune -> train -> eval, resuming what an earlier run of it left;
- ``pool``: the cells in worker processes (``--jobs N``), results recorded by the parent;
- ``job``: ``run_sweep``, every unfinished cell, one at a time or through ``pool``;
- ``report``: mean ± std tables (rich, Markdown, CSV) and the plot.

The names below load their submodule on first use (``force_cli.lazy``), so that importing the
package does not load torch.
"""

from force_cli.lazy import lazy_exports

_EXPORTS = {
    "RESULTS_FILE": "results", "append_result": "results", "cell_key": "results", "finished_cells": "results",
    "read_results": "results",
    "Cell": "plan", "check_jobs": "plan", "check_out_dir": "plan", "check_recipe": "plan", "expand_grid": "plan",
    "prune_config": "plan", "sweep_settings": "plan",
    "SweepHooks": "cell", "run_cell": "cell",
    "WorkerDied": "pool", "run_parallel": "pool",
    "run_sweep": "job",
    "summarise": "report", "write_report": "report",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
