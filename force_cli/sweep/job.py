"""`force sweep` as a library call: every unfinished cell of a recipe, one at a time or in worker
processes (``pool``), each cell's record appended to ``OUT/results.jsonl`` as it ends.

A cell whose line is there is finished and skipped on a re-run, and an unfinished one picks up what
it left (``cell``): an interrupted sweep loses at most the work since the last save of the cells
in progress.
"""

from __future__ import annotations

from pathlib import Path

from force_cli.config import Recipe
from force_cli.errors import TrainingDiverged, TrainingInterrupted
from force_cli.sweep.cell import SweepHooks, run_cell
from force_cli.sweep.plan import Cell, check_jobs, check_out_dir, check_recipe, sweep_settings
from force_cli.sweep.pool import run_parallel
from force_cli.sweep.results import append_result, finished_cells, write_info


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
        run_parallel(recipe, todo, out_dir, jobs, hooks, finish)
        return records
    for index, cell in enumerate(todo, start=1):
        if hooks.on_cell_start:
            hooks.on_cell_start(cell, index, len(todo))
        finish(cell, run_cell(recipe, cell, out_dir, hooks))
    return records
