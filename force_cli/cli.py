"""The `force` command: parse, call the library, render. No algorithm lives here.

Results go to stdout (a checkpoint path, a table, or one JSON document); progress and errors go
to stderr. A ForceError from the library becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import force_cli
from force_cli.config import PruneConfig, load_recipe, resolve
from force_cli.data import DATASETS
from force_cli.errors import ForceError
from force_cli.models import INIT_SCHEMES, MODELS
from force_cli.pruning import METHODS, SCHEDULES

app = typer.Typer(
    name="force",
    help="Prune neural networks at initialization (FORCE, Iterative SNIP, SNIP, GraSP, SynFlow, ...) "
    "into portable sparse checkpoints, then train, evaluate and inspect them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True)


def _names(registry) -> str:
    return ", ".join(registry)


def fail(message: str, code: int = 2) -> typer.Exit:
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code)


def user_errors(command):
    """Turn library errors into one line + exit 2, and Ctrl-C into exit 130, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ForceError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted; nothing was written under the final name", 130) from None

    return wrapper


def progress_bar(quiet: bool) -> Progress:
    """A rich progress bar on stderr, silent when stderr is not a terminal or with --quiet."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=stderr,
        disable=quiet or not stderr.is_terminal,
        transient=False,
    )


def _version(value: bool):
    if value:
        import torch

        stdout.print(f"force-cli {force_cli.__version__} (torch {torch.__version__}, checkpoint format {force_cli.FORMAT_VERSION})")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
):
    """force-cli: pruning at initialization, as a command-line tool."""


RecipeOpt = Annotated[Optional[Path], typer.Option("--recipe", help="YAML recipe supplying defaults; flags given here win.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document to stdout (for jq).")]


@app.command(
    epilog="Examples:\n\n"
    "  force prune --model resnet50 --sparsity 0.995\n\n"
    "  force prune --model lenet300 --dataset digits --sparsity 0.99 --method iter-snip -o lenet.safetensors\n\n"
    "  force train \"$(force prune --model vgg19 --sparsity 0.99 --quiet)\"",
)
@user_errors
def prune(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help=f"Model: {_names(MODELS)}.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help=f"Dataset (default: cifar10): {_names(DATASETS)}.")] = None,
    sparsity: Annotated[Optional[float], typer.Option("--sparsity", "-s", help="Fraction of prunable weights to remove, in [0, 1).")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help=f"Criterion (default: force): {_names(METHODS)}.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Pruning steps of iterative methods (default: 60; synflow 100).")] = None,
    schedule: Annotated[Optional[str], typer.Option("--schedule", help=f"Density schedule (default: exp): {_names(SCHEDULES)}.")] = None,
    batches: Annotated[Optional[int], typer.Option("--batches", help="Mini-batches averaged per score (default: 1).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Mini-batch size (default: 128).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for init, data order and random pruning (default: 0).")] = None,
    init: Annotated[Optional[str], typer.Option("--init", help=f"Weight init (default: kaiming-normal): {_names(INIT_SCHEMES)}.")] = None,
    device: DeviceOpt = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Dataset root (default: $FORCE_DATA or the user cache).")] = None,
    download: Annotated[Optional[bool], typer.Option("--download/--no-download", help="Download a missing dataset (default: download).")] = None,
    recipe: RecipeOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Checkpoint to write (default: MODEL-DATASET-METHOD-sSPARSITY-seedSEED.safetensors).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    quiet: QuietOpt = False,
):
    """Prune a freshly initialized network and write a sparse checkpoint; print its path."""
    from force_cli.pruning.job import prune_to_checkpoint

    flags = dict(model=model, dataset=dataset, sparsity=sparsity, method=method, steps=steps, schedule=schedule,
                 batches=batches, batch_size=batch_size, seed=seed, init=init, device=device, data_dir=data_dir,
                 download=download)
    defaults = load_recipe(recipe).settings_for("prune") if recipe else None
    cfg = resolve(PruneConfig, defaults, flags)
    with progress_bar(quiet) as bar:
        task = None

        def on_start(total_steps: int):
            nonlocal task
            task = bar.add_task(f"pruning {cfg.model} ({cfg.method})", total=total_steps, status="")

        def on_step(info):
            bar.update(task, completed=info.step, status=f"density {info.density:.4%}")

        path, result = prune_to_checkpoint(cfg, output, overwrite=overwrite, on_step=on_step, on_start=on_start)
    stderr.print(f"kept {result.kept:,} of {result.total:,} weights (sparsity {result.sparsity:.4%})", highlight=False) if not quiet else None
    print(path)


@app.command(
    epilog="Examples:\n\n"
    "  force inspect lenet.safetensors\n\n"
    "  force inspect lenet.safetensors --json | jq .totals.effective_density",
)
@user_errors
def inspect(
    checkpoint: Annotated[Path, typer.Argument(help="A force checkpoint (.safetensors).")],
    json_output: JsonOpt = False,
):
    """Per-layer density and effective density of a checkpoint, with its metadata."""
    from force_cli.checkpoint import load_checkpoint
    from force_cli.report import effective_masks, render, summary
    from force_cli.restore import input_shape, model_from_checkpoint

    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    effective = effective_masks(model, ckpt.masks, input_shape(ckpt.metadata))
    report = summary(ckpt.masks, effective, ckpt.metadata, str(checkpoint))
    if json_output:
        print(json.dumps(report))
    else:
        render(report, stdout)


def main():
    app()


if __name__ == "__main__":
    main()
