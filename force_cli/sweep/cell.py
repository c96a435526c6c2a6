"""One cell of a sweep: prune -> train -> eval, picking up whatever an earlier run of it left.

A cell writes its checkpoints under ``OUT/cells/<cell>/`` (``checkpoint.paths.cell_files``). A cell whose pruned
checkpoint exists is not pruned again, and a cell interrupted during training resumes from its
partial checkpoint. The cells reuse the library code of `prune`, `train` and `eval`; nothing here
prunes, trains or evaluates by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from force_cli.checkpoint import read_metadata
from force_cli.checkpoint.paths import cell_files
from force_cli.config import Recipe
from force_cli.evaluation import evaluate_checkpoint
from force_cli.pruning.ablation import ablate_checkpoint
from force_cli.pruning.job import prune_to_checkpoint
from force_cli.sweep.plan import Cell, prune_config
from force_cli.training.job import train_checkpoint
from force_cli.training.loop import TrainCallbacks


@dataclass
class SweepHooks:
    """What the caller (the CLI) wants to hear about; all optional."""

    on_cell_start: Callable[[Cell, int, int], None] | None = None  # cell, cells finished before it + 1, total
    on_cell_done: Callable[[Cell, dict], None] | None = None
    prune_step: Callable | None = None  # pruning's on_step
    on_warning: Callable[[Cell, str], None] | None = None  # a pruning warning (e.g. a collapsed network)
    train_callbacks: TrainCallbacks | None = None


def run_cell(recipe: Recipe, cell: Cell, out_dir: Path, hooks: SweepHooks) -> dict:
    """prune -> train -> eval for one cell, picking up whatever an earlier run of it left behind."""
    common = recipe.common
    files = cell_files(out_dir, cell.key, ablated=bool(cell.ablation))
    files.folder.mkdir(parents=True, exist_ok=True)
    pruned, trained, partial = files.pruned, files.trained, files.partial
    started = time.perf_counter()
    # an ablated cell prunes its method's mask into its own folder first, then applies the check
    source = files.source
    if not pruned.exists() and not source.exists():  # written atomically: if it exists it is complete
        _, result = prune_to_checkpoint(prune_config(recipe, cell), source, on_step=hooks.prune_step)
        for warning in result.warnings:
            if hooks.on_warning:
                hooks.on_warning(cell, warning)
    if not pruned.exists():
        ablate_checkpoint(source, cell.ablation, pruned, device=common.get("device", "auto"),
                          data_dir=common.get("data_dir"))
    pruned_at = time.perf_counter()
    if not trained.exists():
        train_checkpoint(
            None if partial.exists() else pruned, trained,
            None if partial.exists() else recipe.sections.get("train", {}),
            resume=partial if partial.exists() else None,
            data_dir=common.get("data_dir"), download=common.get("download", True),
            device=common.get("device", "auto"), log=files.log, callbacks=hooks.train_callbacks,
        )
    trained_at = time.perf_counter()
    metrics = evaluate_checkpoint(trained, split="test", data_dir=common.get("data_dir"),
                                  download=common.get("download", True), device=common.get("device", "auto"))
    return {
        "cell": cell.key, "method": cell.label, "sparsity": cell.sparsity, "seed": cell.seed,
        **({"base_method": cell.label.split("+")[0], "ablation": cell.ablation} if cell.ablation else {}),
        "achieved_sparsity": 1.0 - metrics["density"],
        **_connectivity(pruned),
        "test_acc": metrics["top1"], "test_top5": metrics["top5"], "test_loss": metrics["loss"],
        "test_samples": metrics["samples"],
        "prune_seconds": round(pruned_at - started, 3), "train_seconds": round(trained_at - pruned_at, 3),
        "pruned": str(pruned.relative_to(out_dir)), "trained": str(trained.relative_to(out_dir)),
    }


def _connectivity(pruned: Path) -> dict:
    """Effective density and collapse of a cell's pruned network, from its checkpoint's metadata."""
    found = read_metadata(pruned).get("pruning_result")
    found = found if isinstance(found, dict) else {}
    return {"effective_density": found.get("effective_density"), "disconnected": found.get("disconnected")}
