"""`force prune`: settings from flags and a recipe in, a pruned checkpoint out, its path printed.

The names and ranges are checked before torch is loaded (``pruning.checks``), so a typo is
answered at once; the library (``pruning.job.prune_to_checkpoint``) does the work.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from force_cli.checkpoint.paths import check_new_output
from force_cli.cli.console import progress_bar, stderr, warn
from force_cli.cli.options import (CompactOpt, DeviceOpt, OverwriteOpt, QuietOpt, RecipeOpt, ThreadsOpt, default, flag,
                                   names, path, saliency_loss_help, saliency_temperature_help, steps_help)
from force_cli.cli.status import run_wrapper
from force_cli.config import CommonSettings, PruneConfig, PruneSettings, load_recipe, resolve
from force_cli.data.catalog import DATASET_NAMES, get_spec
from force_cli.locking import hold_output
from force_cli.models.names import INIT_NAMES, MODEL_NAMES
from force_cli.pruning.budgets import BUDGETS
from force_cli.pruning.checks import default_output, validate
from force_cli.pruning.methods import METHODS
from force_cli.pruning.schedules import SCHEDULES
from force_cli.pruning.ties import TIE_RULES
from force_cli.threads import apply_threads

EPILOG = ("Examples:\n\n"
          "  force prune --model resnet50 --sparsity 0.995\n\n"
          "  force prune --model lenet300 --dataset digits --sparsity 0.99 --method iter-snip -o lenet.safetensors\n\n"
          "  force train \"$(force prune --model vgg19 --sparsity 0.99 --quiet)\"\n\n"
          "  force prune -m lenet300 -d digits -s 0.99 --method random --budget erk -o erk-random.safetensors\n\n"
          "  force prune -m vgg19 -s 0.995 --steps 10 --ties keep   # the paper code's masks, bit for bit")


@run_wrapper
def prune(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help=f"Model (required unless the recipe sets it): {names(MODEL_NAMES)}; or torchvision:NAME; or package.module:factory (a function returning an nn.Module).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help=f"Dataset (default: {default(CommonSettings, 'dataset')}): {names(DATASET_NAMES)}.")] = None,
    sparsity: Annotated[Optional[float], typer.Option("--sparsity", "-s", help="Fraction of prunable weights to remove, in [0, 1) (required unless the recipe sets it).")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help=f"Criterion (default: {default(PruneSettings, 'method')}): {names(METHODS)}.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help=steps_help())] = None,
    schedule: Annotated[Optional[str], typer.Option("--schedule", help=f"Density schedule (default: {default(PruneSettings, 'schedule')}): {names(SCHEDULES)}.")] = None,
    batches: Annotated[Optional[int], typer.Option("--batches", help=f"Mini-batches averaged per score (default: {default(PruneSettings, 'batches')}).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help=f"Mini-batch size (default: {default(PruneSettings, 'batch_size')}).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help=f"Seed for init, data order and random pruning (default: {default(CommonSettings, 'seed')}).")] = None,
    init: Annotated[Optional[str], typer.Option("--init", help=f"Weight init (default: {default(PruneSettings, 'init')}): {names(INIT_NAMES)}.")] = None,
    saliency_loss: Annotated[Optional[str], typer.Option("--saliency-loss", help=saliency_loss_help())] = None,
    saliency_temperature: Annotated[Optional[float], typer.Option("--saliency-temperature", help=saliency_temperature_help())] = None,
    val_fraction: Annotated[Optional[float], typer.Option("--val-fraction", help="Fraction of the training set `train` will hold out for validation (same seed); pruning never draws from it (default: the dataset's training default).")] = None,
    budget: Annotated[Optional[str], typer.Option("--budget", help=f"Per-layer budget (default: {default(PruneSettings, 'budget')}): " + "; ".join(f"{k}: {v.help}" for k, v in BUDGETS.items()) + ".")] = None,
    ties: Annotated[Optional[str], typer.Option("--ties", help=f"Scores tied at a step's threshold (default: {default(PruneSettings, 'ties')}): " + "; ".join(f"{k}: {v}" for k, v in TIE_RULES.items()) + ".")] = None,
    allow_disconnected: Annotated[Optional[bool], typer.Option("--allow-disconnected", metavar="", help="Write the checkpoint even if pruning leaves no input-to-output path or an empty output layer (default: fail with exit code 1).")] = None,
    device: DeviceOpt = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Dataset root (default: $FORCE_DATA or the user cache).")] = None,
    download: Annotated[Optional[bool], typer.Option("--download/--no-download", metavar="", help=f"Download a missing dataset (default: {flag('download', default(CommonSettings, 'download'))}).")] = None,
    recipe: RecipeOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", parser=path, metavar="<path>", help="Checkpoint to write (default: MODEL-DATASET-METHOD-sSPARSITY-seedSEED.safetensors).")] = None,
    overwrite: OverwriteOpt = False,
    compact: CompactOpt = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Prune a freshly initialized network and write a sparse checkpoint; print its path."""
    flags = dict(model=model, dataset=dataset, sparsity=sparsity, method=method, steps=steps, schedule=schedule,
                 batches=batches, batch_size=batch_size, seed=seed, init=init, device=device, data_dir=data_dir,
                 download=download, saliency_loss=saliency_loss, saliency_temperature=saliency_temperature,
                 val_fraction=val_fraction, allow_disconnected=allow_disconnected, budget=budget, ties=ties)
    defaults = load_recipe(recipe).settings_for("prune") if recipe else None
    cfg = resolve(PruneConfig, defaults, flags)
    output = _output(cfg, output, overwrite)
    apply_threads(threads)
    # torch-free start-up: the library loads torch, so it is imported once the settings are known good
    from force_cli.distributed import is_main
    from force_cli.pruning.job import prune_to_checkpoint

    main = is_main()  # under torchrun only rank 0 locks, writes and reports
    quiet = quiet or not main
    with hold_output(output) if main else contextlib.nullcontext(), progress_bar(quiet) as bar:
        task = None

        def on_start(total_steps: int):
            nonlocal task
            task = bar.add_task(f"pruning {cfg.model} ({cfg.method})", total=total_steps, status="")

        def on_step(info):
            bar.update(task, completed=info.step, status=f"density {info.density:.4%}")

        path_written, result = prune_to_checkpoint(cfg, output, overwrite=overwrite, on_step=on_step,
                                                   on_start=on_start, compact=compact)
    if not main:
        return
    for warning in result.warnings:
        warn(warning)
    if not quiet:
        stderr.print(f"kept {result.kept:,} of {result.total:,} weights (sparsity {result.sparsity:.4%})", highlight=False)
    print(path_written)


def _output(cfg: PruneConfig, output: Path | None, overwrite: bool) -> Path:
    """The checkpoint `prune` will write, checked before any work; names are validated first,
    so that a bad dataset name is reported as such and not as a missing output folder."""
    validate(cfg)
    get_spec(cfg.dataset)  # an unknown dataset is named as such (catalog.py imports no torch)
    output = output if output is not None else default_output(cfg)
    check_new_output(output, overwrite)
    return output
