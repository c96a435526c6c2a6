"""`force sweep`: the grid prune -> train -> eval for every method × sparsity × seed of a recipe.

Each cell writes its checkpoints under ``OUT/cells/<cell>/`` and, once evaluated, appends one JSON
line to ``OUT/results.jsonl``. A cell whose line is there is finished and skipped on a re-run; a
cell whose pruned checkpoint exists is not pruned again, and a cell interrupted during training
resumes from its partial checkpoint. An interrupted sweep therefore loses at most the work since
the last save of the cell in progress. The cells reuse the library code of `prune`, `train` and
`eval`; nothing here prunes, trains or evaluates by itself.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from force_cli.config import PruneConfig, Recipe, SweepSettings, TrainSettings, resolve
from force_cli.atomic import write_atomic
from force_cli.errors import ConfigError, OutputError, TrainingDiverged, TrainingInterrupted
from force_cli.evaluation import evaluate_checkpoint
from force_cli.pruning.ablation import ablate_checkpoint
from force_cli.pruning.ablation_names import check_ablation
from force_cli.pruning.budgets import check_budget
from force_cli.pruning.methods import get_method
from force_cli.pruning.job import prune_to_checkpoint, validate
from force_cli.sweep_report import RESULTS_FILE, cell_key, read_results, write_info
from force_cli.training.job import partial_path, train_checkpoint
from force_cli.training.loop import TrainCallbacks
from force_cli.training.settings import complete_settings


@dataclass(frozen=True)
class Cell:
    method: str
    sparsity: float
    seed: int
    ablation: str | None = None  # a sanity check applied to the method's mask (pruning/ablation.py)
    budget: str | None = None  # this cell's --budget, from METHOD@BUDGET in the recipe (None: the prune: one)

    @property
    def label(self) -> str:
        """The method as the results table shows it: ``force``, ``random@erk`` with a budget of its
        own, ``force+reinit`` for an ablation."""
        return self.method + (f"@{self.budget}" if self.budget else "") + (f"+{self.ablation}" if self.ablation else "")

    @property
    def key(self) -> str:
        return cell_key(self.label, self.sparsity, self.seed)  # the label: a results line's 'method'


def sweep_settings(recipe: Recipe) -> SweepSettings:
    if "sweep" not in recipe.sections:
        raise ConfigError(f"{recipe.path}: no 'sweep:' section; add one with methods, sparsities and seeds")
    return SweepSettings(**recipe.sections["sweep"])


def expand_grid(settings: SweepSettings) -> list[Cell]:
    """All cells, seed-major: after the first seed's pass every method and sparsity has a result."""
    if not settings.methods or not settings.sparsities or not settings.seeds:
        raise ConfigError("a sweep needs at least one method, one sparsity and one seed")
    unique = lambda xs: list(dict.fromkeys(xs))  # noqa: E731 - keep the recipe's order, drop repeats
    methods = {entry: _method_and_budget(entry) for entry in unique(settings.methods)}
    for s in settings.sparsities:
        if not 0.0 <= s < 1.0:
            raise ConfigError(f"sweep sparsity {s} is outside [0, 1)")
    for a in settings.ablations:
        check_ablation(a)
    for m in settings.ablated_methods:
        if m not in settings.methods:
            raise ConfigError(f"sweep ablated_methods names '{m}', which is not one of the sweep's methods "
                              f"({', '.join(settings.methods)}); add it to methods or drop it")
    ablated = set(settings.ablated_methods or settings.methods)
    cells = []
    for seed in unique(settings.seeds):
        if settings.dense:
            cells.append(Cell(DENSE, 0.0, int(seed)))
        for s in unique(settings.sparsities):
            for entry, (m, budget) in methods.items():
                cells.append(Cell(m, float(s), int(seed), budget=budget))
                if entry in ablated:
                    cells += [Cell(m, float(s), int(seed), a, budget) for a in unique(settings.ablations)]
    return cells


def _method_and_budget(entry: str) -> tuple[str, str | None]:
    """``force`` -> (force, None); ``random@erk`` -> (random, erk): a method with a budget of its own."""
    method, _, budget = entry.partition("@")
    get_method(method)
    if budget:
        check_budget(budget)
    return method, budget or None


DENSE = "dense"  # the reference cell of `dense: true`: nothing pruned, trained like the others


def prune_config(recipe: Recipe, cell: Cell) -> PruneConfig:
    """The cell's `force prune` settings. Pruning holds out the validation images of the recipe's
    training, and a collapsed network is recorded (it trains to chance accuracy), not an error."""
    settings = recipe.settings_for("prune")
    train_val = recipe.sections.get("train", {}).get("val_fraction")
    if settings.get("val_fraction") is None and train_val is not None:
        settings["val_fraction"] = train_val
    flags = {"method": cell.method, "sparsity": cell.sparsity, "seed": cell.seed, "allow_disconnected": True,
             "budget": cell.budget}
    if cell.method == DENSE:  # sparsity 0 keeps every weight; a data-free one-shot method needs no batch
        flags["method"] = "magnitude"
    return resolve(PruneConfig, settings, flags)


def finished_cells(out_dir: Path) -> set[str]:
    return {r["cell"] for r in read_results(out_dir / RESULTS_FILE)}


def append_result(out_dir: Path, record: dict) -> None:
    """One line per finished cell, written in a single call and flushed to disk.

    A line cut short by an earlier interruption is dropped first, so it cannot swallow this one.
    """
    path = out_dir / RESULTS_FILE
    try:
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                write_atomic(path, data[: data.rfind(b"\n") + 1], "results file")
        with open(path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise OutputError.from_os(exc, path, "results file") from None


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
    cell_dir = out_dir / "cells" / cell.key
    cell_dir.mkdir(parents=True, exist_ok=True)
    pruned = cell_dir / "pruned.safetensors"
    trained = cell_dir / "trained.safetensors"
    partial = partial_path(trained)
    started = time.perf_counter()
    # an ablated cell prunes its method's mask into its own folder first, then applies the check
    source = cell_dir / "source.safetensors" if cell.ablation else pruned
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
            device=common.get("device", "auto"), log=cell_dir / "train.jsonl", callbacks=hooks.train_callbacks,
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
    from force_cli.checkpoint import read_metadata

    found = read_metadata(pruned).get("pruning_result")
    found = found if isinstance(found, dict) else {}
    return {"effective_density": found.get("effective_density"), "disconnected": found.get("disconnected")}


def check_recipe(recipe: Recipe) -> list[Cell]:
    """Every check of the recipe that needs no data, before any folder is made; the cells."""
    cells = expand_grid(sweep_settings(recipe))
    if recipe.common.get("model") is None:
        raise ConfigError(f"{recipe.path}: no model; add 'model: NAME' at the top level of the recipe")
    cfg = prune_config(recipe, cells[0])
    validate(cfg)  # names and ranges, before any cell starts
    complete_settings(TrainSettings(**recipe.sections.get("train", {})), cfg.dataset)  # the train: section too
    return cells


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder that is a file, or that cannot be created, before any cell runs."""
    if str(out_dir) in ("", "."):
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out '{out_dir}' is a file, not a folder; give a folder for the sweep's results")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError.from_os(exc, out_dir, "sweep folder") from None


def run_sweep(recipe: Recipe, out_dir: Path, hooks: SweepHooks | None = None, jobs: int = 1) -> list[dict]:
    """Run every unfinished cell, in ``jobs`` worker processes when more than one; return the
    records of the cells run now.

    The caller holds the folder's lock (``locking.hold``) so that two sweeps never share it;
    `force sweep` does. An interruption or a divergence says that the finished cells are kept
    and how to continue."""
    try:
        return _run_sweep(recipe, out_dir, hooks, jobs)
    except TrainingInterrupted as exc:
        raise TrainingInterrupted(f"sweep interrupted ({exc}); run the same command again to continue",
                                  exc.partial, exc.reason) from None
    except TrainingDiverged as exc:
        raise TrainingDiverged(f"{exc}; the finished cells are kept in {out_dir}") from None


def _run_sweep(recipe: Recipe, out_dir: Path, hooks: SweepHooks | None, jobs: int) -> list[dict]:
    check_jobs(jobs)
    hooks = hooks or SweepHooks()
    settings = sweep_settings(recipe)
    cells = check_recipe(recipe)
    check_out_dir(out_dir)
    write_info(out_dir, settings.title)
    done = finished_cells(out_dir)
    todo = [c for c in cells if c.key not in done]
    records = []

    def finish(cell: Cell, record: dict) -> None:
        append_result(out_dir, record)
        records.append(record)
        if hooks.on_cell_done:
            hooks.on_cell_done(cell, record)

    if jobs > 1 and len(todo) > 1:
        from force_cli.sweep_pool import run_parallel

        run_parallel(recipe, todo, out_dir, jobs, hooks, finish)
        return records
    for index, cell in enumerate(todo, start=1):
        if hooks.on_cell_start:
            hooks.on_cell_start(cell, index, len(todo))
        finish(cell, run_cell(recipe, cell, out_dir, hooks))
    return records


def check_jobs(jobs: int) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be a whole number of worker processes, at least 1, got {jobs!r}")
