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
from force_cli.evaluation import SPLITS
from force_cli.training import LR_SCHEDULES, OPTIMIZERS, TRAIN_DEFAULTS

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
CheckpointArg = Annotated[Path, typer.Argument(help="A force checkpoint (.safetensors).")]


def _threads(value: Optional[int]) -> Optional[int]:
    """Set torch's thread count while the options are parsed, before the command runs."""
    from force_cli.threads import apply_threads

    try:
        apply_threads(value)
    except ForceError as exc:
        raise fail(str(exc)) from None
    return value


ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", callback=_threads, show_default=False,
    help="CPU threads for torch (default: $FORCE_THREADS, else $OMP_NUM_THREADS, else the cores this process may use: affinity and cgroup quota).")]


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
    threads: ThreadsOpt = None,
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
    if not quiet:
        stderr.print(f"kept {result.kept:,} of {result.total:,} weights (sparsity {result.sparsity:.4%})", highlight=False)
    print(path)


@app.command(
    epilog="Examples:\n\n"
    "  force inspect lenet.safetensors\n\n"
    "  force inspect lenet.safetensors --json | jq .totals.effective_density",
)
@user_errors
def inspect(
    checkpoint: CheckpointArg,
    json_output: JsonOpt = False,
    threads: ThreadsOpt = None,
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


def _train_defaults_help() -> str:
    """The per-dataset training defaults, one line per distinct set, for `force train --help`."""
    groups: dict[str, list[str]] = {}
    for name, d in TRAIN_DEFAULTS.items():
        milestones = ",".join(map(str, d["milestones"]))
        line = (f"{d['optimizer']} lr {d['lr']:g} momentum {d['momentum']:g} weight decay {d['weight_decay']:g}, "
                f"batch {d['batch_size']}, {d['epochs']} epochs, lr x{d['gamma']:g} after {milestones}, "
                f"val fraction {d['val_fraction']:g}")
        groups.setdefault(line, []).append(name)
    return "\n\n".join(f"  {', '.join(names)}: {line}" for line, names in groups.items())


def _milestones(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ForceError(f"--milestones must be comma-separated epochs such as 150,250, got '{text}'") from None


@app.command(
    epilog="Training defaults by dataset (each can be changed by a flag or a recipe's train: section):\n\n"
    + _train_defaults_help()
    + "\n\nWith --optimizer adam the default lr is 0.001. The seed defaults to the checkpoint's.\n\n"
    "Writes OUTPUT (default: CHECKPOINT's name with -trained) and prints its path. Every --save-every "
    "epochs, and on Ctrl-C or SIGTERM, the progress goes to OUTPUT's name with .partial.safetensors; "
    "continue it with --resume. Exit codes: 0 done, 2 bad input, 1 the loss became NaN or infinite "
    "(the last good partial checkpoint is kept), 130/143 interrupted (progress saved).\n\n"
    "Examples:\n\n"
    "  force train lenet.safetensors --epochs 30 --log lenet.jsonl\n\n"
    "  force train \"$(force prune --model vgg19 --sparsity 0.99 --quiet)\" --amp --workers 8\n\n"
    "  force train --resume lenet-trained.partial.safetensors",
)
@user_errors
def train(
    checkpoint: Annotated[Optional[Path], typer.Argument(help="Checkpoint to train (made by `force prune`).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Trained checkpoint to write (default: CHECKPOINT-trained.safetensors).")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the partial checkpoint of an interrupted run (instead of CHECKPOINT).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs to train (default: per dataset, below).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Initial learning rate.")] = None,
    optimizer: Annotated[Optional[str], typer.Option("--optimizer", help=f"Optimizer (default: sgd): {_names(OPTIMIZERS)}.")] = None,
    momentum: Annotated[Optional[float], typer.Option("--momentum", help="SGD momentum (default: 0.9).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="L2 weight decay.")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option("--lr-schedule", help=f"Learning-rate schedule (default: multistep): {_names(LR_SCHEDULES)}.")] = None,
    milestones: Annotated[Optional[str], typer.Option("--milestones", help="multistep: comma-separated epochs after which lr is multiplied by --gamma, e.g. 150,250.")] = None,
    gamma: Annotated[Optional[float], typer.Option("--gamma", help="multistep: lr factor at each milestone (default: 0.1).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Training mini-batch size.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option("--val-fraction", help="Fraction of the training set held out for validation.")] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Training augmentation (crops and flips where the dataset has them) (default: augment).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Data-loading worker processes (default: 0).")] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", help="Mixed precision (autocast, bfloat16 where supported) on CUDA; no effect on CPU (default: no-amp).")] = None,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", help="channels_last memory format for conv nets (faster on recent GPUs) (default: no).")] = None,
    save_every: Annotated[Optional[int], typer.Option("--save-every", help="Epochs between partial checkpoints; 0: only when interrupted (default: 1).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the data order, augmentation and validation split (default: the checkpoint's).")] = None,
    device: DeviceOpt = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Dataset root (default: the checkpoint's, $FORCE_DATA or the user cache).")] = None,
    download: Annotated[Optional[bool], typer.Option("--download/--no-download", help="Download a missing dataset (default: download).")] = None,
    recipe: RecipeOpt = None,
    log: Annotated[Optional[Path], typer.Option("--log", help="Append one JSON line per epoch to this file (.jsonl).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output (and a stale partial checkpoint).")] = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Train a pruned checkpoint with its masks enforced; write a trained checkpoint and print its path."""
    from force_cli.config import TrainSettings
    from force_cli.device import resolve_device
    from force_cli.train_job import TrainingInterrupted, train_checkpoint
    from force_cli.training import TrainCallbacks, TrainingDiverged

    flags = dict(epochs=epochs, lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                 lr_schedule=lr_schedule, milestones=_milestones(milestones), gamma=gamma, batch_size=batch_size,
                 val_fraction=val_fraction, augment=augment, workers=workers, amp=amp, channels_last=channels_last,
                 save_every=save_every)
    common: dict = {}
    if resume is not None:
        if recipe is not None:
            raise ForceError("--recipe cannot be combined with --resume: the run's settings are in the partial checkpoint")
        settings = {k: v for k, v in flags.items() if v is not None}
    else:
        loaded = load_recipe(recipe) if recipe else None
        common = loaded.common if loaded else {}
        settings = resolve(TrainSettings, loaded.sections.get("train", {}) if loaded else None, flags)

    def pick(value, key: str, default=None):  # flag > recipe > default
        return value if value is not None else common.get(key, default)

    device = pick(device, "device", "auto")
    wants_amp = settings.get("amp") if isinstance(settings, dict) else settings.amp
    if wants_amp and not quiet and resolve_device(device).type != "cuda":
        stderr.print("note: --amp has no effect on CPU", highlight=False)

    with progress_bar(quiet) as bar:
        tasks: dict = {}

        def on_start(first: int, last: int, batches: int):
            tasks["epoch"] = bar.add_task("epoch", total=last, completed=first - 1, status="")
            tasks["batch"] = bar.add_task("batch", total=batches, status="")

        def on_batch(epoch: int, batches: int, totals):
            bar.update(tasks["batch"], completed=totals.batches,
                       status=f"loss {totals.loss:.4f} acc {totals.acc:.2%}")

        def on_epoch(r: dict):
            bar.update(tasks["epoch"], completed=r["epoch"], status=f"test acc {r['test_acc']:.2%}")
            bar.update(tasks["batch"], completed=0)
            if not quiet:
                val = f"  val {r['val_loss']:.4f} {r['val_acc']:.2%}" if r["val_loss"] is not None else ""
                bar.console.print(
                    f"epoch {r['epoch']}  lr {r['lr']:g}  train {r['train_loss']:.4f} {r['train_acc']:.2%}{val}"
                    f"  test {r['test_loss']:.4f} {r['test_acc']:.2%}  {r['seconds']:.1f}s", highlight=False, soft_wrap=True)

        try:
            result = train_checkpoint(
                checkpoint, output, settings, resume=resume, seed=pick(seed, "seed"),
                data_dir=pick(data_dir, "data_dir"), download=pick(download, "download", True), device=device,
                overwrite=overwrite, log=log, callbacks=TrainCallbacks(on_start=on_start, on_batch=on_batch, on_epoch=on_epoch),
            )
        except TrainingInterrupted as exc:
            raise fail(str(exc), exc.exit_code) from None
        except TrainingDiverged as exc:
            raise fail(str(exc), 1) from None
    if not quiet:
        m = result.metrics
        stderr.print(f"trained {len(result.history)} epochs: test accuracy {m['test_acc']:.2%} (loss {m['test_loss']:.4f})",
                     highlight=False)
    print(result.path)


@app.command(
    "eval",
    epilog="Examples:\n\n"
    "  force eval lenet-trained.safetensors\n\n"
    "  force eval lenet-trained.safetensors --split val --json | jq .top1",
)
@user_errors
def eval_command(
    checkpoint: CheckpointArg,
    split: Annotated[str, typer.Option("--split", help=f"Which split: {', '.join(SPLITS)} (val: the part held out during training).")] = "test",
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Evaluate on another dataset with the same classes and image shape (default: the checkpoint's).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Evaluation mini-batch size.")] = 256,
    workers: Annotated[int, typer.Option("--workers", help="Data-loading worker processes.")] = 0,
    device: DeviceOpt = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Dataset root (default: the checkpoint's, $FORCE_DATA or the user cache).")] = None,
    download: Annotated[bool, typer.Option("--download/--no-download", help="Download a missing dataset.")] = True,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Top-1 and top-5 accuracy, loss, samples and density of a checkpoint on a dataset split."""
    from rich.table import Table

    from force_cli.evaluation import evaluate_checkpoint

    with progress_bar(quiet) as bar:
        task = None

        def on_start(samples: int):
            nonlocal task
            task = bar.add_task(f"evaluating ({split})", total=samples, status="")

        report = evaluate_checkpoint(
            checkpoint, split=split, dataset=dataset, data_dir=data_dir, download=download,
            device=device or "auto", batch_size=batch_size, workers=workers, on_start=on_start,
            on_batch=lambda done: bar.update(task, completed=done),
        )
    if json_output:
        print(json.dumps(report))
        return
    table = Table(title=f"{report['checkpoint']}: {report['model']} on {report['dataset']} ({report['split']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("top-1 accuracy", f"{report['top1']:.2%}")
    table.add_row(f"top-{report['top5_k']} accuracy", f"{report['top5']:.2%}")
    table.add_row("loss", f"{report['loss']:.4f}")
    table.add_row("samples", f"{report['samples']:,}")
    table.add_row("density", f"{report['density']:.4%}")
    stdout.print(table)


@app.command(
    epilog="Examples:\n\n"
    "  force sweep recipes/digits-lenet300.yaml --out runs/digits\n\n"
    "  force sweep recipes/cifar10-vgg19.yaml --dry-run\n\n"
    "  force sweep --report runs/digits",
)
@user_errors
def sweep(
    recipe: Annotated[Optional[Path], typer.Argument(help="YAML recipe with a 'sweep:' section (methods, sparsities, seeds).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for checkpoints and results (default: runs/RECIPE-NAME).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells and whether each is done; run nothing.")] = False,
    report: Annotated[Optional[Path], typer.Option("--report", help="Only (re)write the table and plot of this sweep folder.")] = None,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Run prune -> train -> eval for every method x sparsity x seed of a recipe; resumable.

    Re-running the same command skips finished cells and resumes an interrupted one. At the end
    (or with --report) a mean ± std table is printed and results.md, .csv, .png and .svg are written.
    """
    from force_cli.sweep import SweepHooks, expand_grid, finished_cells, run_sweep, sweep_settings
    from force_cli.train_job import TrainingInterrupted
    from force_cli.training import TrainingDiverged

    if report is not None:
        _write_sweep_report(report, "")
        return
    if recipe is None:
        raise ForceError("give a recipe (force sweep RECIPE.yaml) or --report DIR")
    loaded = load_recipe(recipe)
    settings = sweep_settings(loaded)
    out = out or Path("runs") / recipe.stem
    if dry_run:
        cells = expand_grid(settings)
        done = finished_cells(out) if out.exists() else set()
        for cell in cells:
            print(f"{'done' if cell.key in done else 'todo'}\t{cell.key}")
        stderr.print(f"{len(cells)} cells, {len(done & {c.key for c in cells})} done, results in {out}", highlight=False)
        return
    with progress_bar(quiet) as bar:
        task = bar.add_task("sweep", total=None, status="")

        def on_cell_start(cell, index, total):
            bar.update(task, total=total, completed=index - 1, status=cell.key)

        def on_cell_done(cell, record):
            bar.advance(task)
            if not quiet:
                bar.console.print(f"{cell.key}: test accuracy {record['test_acc']:.2%} "
                                  f"({record['prune_seconds'] + record['train_seconds']:.1f}s)", highlight=False)

        try:
            records = run_sweep(loaded, out, SweepHooks(on_cell_start=on_cell_start, on_cell_done=on_cell_done))
        except TrainingInterrupted as exc:
            raise fail(f"sweep interrupted ({exc}); run the same command again to continue", exc.exit_code) from None
        except TrainingDiverged as exc:
            raise fail(f"{exc}; the finished cells are kept in {out}", 1) from None
    if not quiet:
        stderr.print(f"{len(records)} cells run now; results in {out}", highlight=False)
    _write_sweep_report(out, settings.title)


def _write_sweep_report(folder: Path, title: str) -> None:
    from force_cli.sweep_report import write_report

    written = write_report(folder, stdout, title=title)
    stderr.print("wrote " + ", ".join(str(p) for p in written.values()), highlight=False, soft_wrap=True)


def main():
    app()


if __name__ == "__main__":
    main()
