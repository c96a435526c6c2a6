"""`force sweep`: prune -> train -> eval for every method x sparsity x seed of a recipe; resumable.

The library (``sweep.job.run_sweep``) runs the cells; this module shows progress, names what an
interruption kept, and writes the report (``sweep.report.write_report``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from force_cli.cli.console import plain_line, progress_bar, stdout, warn
from force_cli.cli.options import QuietOpt, ThreadsOpt, path
from force_cli.cli.status import interruption, run_wrapper, stopped
from force_cli.config import load_recipe
from force_cli.errors import ForceError
from force_cli.locking import hold
from force_cli.models.trust import trusted_model_code
from force_cli.sweep.report import write_report
from force_cli.threads import apply_threads

EPILOG = ("Examples:\n\n"
          "  force sweep recipes/digits-lenet300.yaml --out runs/digits\n\n"
          "  force sweep recipes/cifar10-vgg19.yaml --dry-run\n\n"
          "  force sweep --report runs/digits")


@run_wrapper
def sweep(
    recipe: Annotated[Optional[Path], typer.Argument(parser=path, metavar="RECIPE", help="YAML recipe with a 'sweep:' section (methods, sparsities, seeds).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", parser=path, metavar="<path>", help="Folder for checkpoints and results (default: runs/RECIPE-NAME).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", metavar="", help="List the cells and whether each is done; run nothing.")] = False,
    report: Annotated[Optional[Path], typer.Option("--report", parser=path, metavar="<path>", help="Only (re)write the table and plot of this sweep folder.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", metavar="N", help="Cells run at once, each in its own worker process with an equal share of the threads (and, where there are GPUs, the GPUs in turn: worker i sees only GPU i mod G); same results as one at a time.")] = 1,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Run prune -> train -> eval for every method x sparsity x seed of a recipe; resumable.

    Re-running the same command skips finished cells and resumes an interrupted one. At the end
    (or with --report) a mean ± std table is printed and results.md, .csv, .png and .svg are written.
    """
    apply_threads(threads)
    # torch-free start-up: the library loads torch, so it is imported when a sweep is asked for
    from force_cli.distributed import launch_from_env
    from force_cli.sweep import (SweepHooks, check_jobs, check_out_dir, check_recipe, expand_grid, finished_cells,
                                 run_sweep, sweep_settings)

    if launch_from_env() is not None:
        raise ForceError("force sweep does not run under torchrun; run it without torchrun, with --jobs N to use "
                         "several GPUs, or run each cell's prune and train under torchrun (README: 'Sweeps on many GPUs')")

    if report is not None:
        if not report.is_dir():
            raise ForceError(f"--report '{report}' is not a folder; give the --out folder of a sweep")
        with hold((report, "sweep folder")):
            _write_report(report, "")
        return
    if recipe is None:
        raise ForceError("give a recipe (force sweep RECIPE.yaml) or --report DIR")
    check_jobs(jobs)
    loaded = load_recipe(recipe)
    settings = sweep_settings(loaded)
    out = out or Path("runs") / recipe.stem
    if out.exists() and not out.is_dir():
        raise ForceError(f"--out '{out}' is a file, not a folder; give a folder for the sweep's results")
    if dry_run:
        cells = expand_grid(settings)
        done = finished_cells(out) if out.exists() else set()
        for cell in cells:
            print(f"{'done' if cell.key in done else 'todo'}\t{cell.key}")
        plain_line(f"{len(cells)} cells, {len(done & {c.key for c in cells})} done, results in {out}")
        return
    check_recipe(loaded)
    check_out_dir(out)
    with hold((out, "sweep folder")), progress_bar(quiet) as bar:
        task = bar.add_task("sweep", total=None, status="")

        def on_cell_start(cell, index, total):
            bar.update(task, total=total, completed=index - 1, status=cell.key)

        def on_cell_done(cell, record):
            bar.advance(task)
            if not quiet:
                bar.console.print(f"{cell.key}: test accuracy {record['test_acc']:.2%} "
                                  f"({record['prune_seconds'] + record['train_seconds']:.1f}s)", highlight=False)

        def on_warning(cell, warning: str):
            warn(f"{cell.key}: {warning}")

        try:
            # the recipe names the model it prunes, so the sweep may rebuild that one from its checkpoints
            with trusted_model_code(only=str(loaded.common.get("model"))):
                records = run_sweep(loaded, out, SweepHooks(on_cell_start=on_cell_start, on_cell_done=on_cell_done,
                                                            on_warning=on_warning), jobs=jobs)
        except KeyboardInterrupt as exc:  # outside training (pruning or evaluating a cell)
            name, code = interruption(exc)
            raise stopped(f"sweep interrupted ({name}); the finished cells are kept in {out}; "
                          "run the same command again to continue", code) from None
        if not quiet:
            plain_line(f"{len(records)} cells run now; results in {out}")
        _write_report(out, settings.title)


def _write_report(folder: Path, title: str) -> None:
    written = write_report(folder, stdout, title=title)
    plain_line("wrote " + ", ".join(str(p) for p in written.values()))
