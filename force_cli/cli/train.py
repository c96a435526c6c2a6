"""`force train`: a pruned checkpoint in, a trained checkpoint out (masks enforced), its path printed.

Flags, the recipe and the input's presence are checked before torch is loaded; the library
(``training.job.train_checkpoint``) trains, saves partial checkpoints and resumes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from force_cli.checkpoint.paths import check_existing
from force_cli.cli.console import progress_bar, stderr, warn
from force_cli.cli.options import (CompactOpt, DeviceOpt, QuietOpt, RecipeOpt, ThreadsOpt, TrustOpt, default, flag,
                                   honours_trust, names, path, train_default)
from force_cli.cli.status import BAD_INPUT, FAILED, INTERRUPTED, SUCCESS, TERMINATED, run_wrapper
from force_cli.config import TrainSettings, load_recipe, resolve
from force_cli.data.catalog import DATASETS
from force_cli.errors import ForceError
from force_cli.threads import apply_threads
from force_cli.training.settings import ADAM_DEFAULT_LR, LR_SCHEDULES, OPTIMIZERS


def _defaults_by_dataset() -> str:
    """The per-dataset training defaults, one line per distinct set, for `force train --help`."""
    groups: dict[str, list[str]] = {}
    for name, spec in DATASETS.items():
        d = spec.train.as_dict()
        milestones = ",".join(map(str, d["milestones"]))
        line = (f"{d['optimizer']} lr {d['lr']:g} momentum {d['momentum']:g} weight decay {d['weight_decay']:g}, "
                f"batch {d['batch_size']}, {d['epochs']} epochs, lr x{d['gamma']:g} after {milestones}, "
                f"val fraction {d['val_fraction']:g}")
        groups.setdefault(line, []).append(name)
    return "\n\n".join(f"  {', '.join(names)}: {line}" for line, names in groups.items())


EPILOG = (
    "Training defaults by dataset (each can be changed by a flag or a recipe's train: section):\n\n"
    + _defaults_by_dataset()
    + f"\n\nWith --optimizer adam the default lr is {ADAM_DEFAULT_LR:g}. The seed defaults to the checkpoint's.\n\n"
    "Writes OUTPUT (default: CHECKPOINT's name with -trained) and prints its path. Every --save-every "
    "epochs, and on Ctrl-C or SIGTERM, the progress goes to OUTPUT's name with .partial.safetensors; "
    f"continue it with --resume. Exit codes: {SUCCESS} done, {BAD_INPUT} bad input, {FAILED} the loss became NaN or "
    f"infinite (the last good partial checkpoint is kept), {INTERRUPTED}/{TERMINATED} interrupted (progress saved).\n\n"
    "Examples:\n\n"
    "  force train lenet.safetensors --epochs 30 --log-file lenet.jsonl\n\n"
    "  force train \"$(force prune --model vgg19 --sparsity 0.99 --quiet)\" --amp --workers 8\n\n"
    "  force train vgg19.safetensors --amp --channels-last --compile\n\n"
    "  force train --resume lenet-trained.partial.safetensors\n\n"
    "  torchrun --standalone --nproc-per-node 4 $(which force) train vgg19.safetensors --batch-size 32 --sync-bn"
)


def _milestones(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ForceError(f"--milestones must be comma-separated epochs such as 150,250, got '{text}'") from None


@run_wrapper
@honours_trust
def train(
    checkpoint: Annotated[Optional[Path], typer.Argument(parser=path, metavar="CHECKPOINT", help="Checkpoint to train (made by `force prune`).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", parser=path, metavar="<path>", help="Trained checkpoint to write (default: CHECKPOINT-trained.safetensors).")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", parser=path, metavar="<path>", help="Continue the partial checkpoint of an interrupted run (instead of CHECKPOINT).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs to train (default: per dataset, below).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Initial learning rate.")] = None,
    optimizer: Annotated[Optional[str], typer.Option("--optimizer", help=f"Optimizer (default: {train_default('optimizer')}): {names(OPTIMIZERS)}.")] = None,
    momentum: Annotated[Optional[float], typer.Option("--momentum", help=f"SGD momentum (default: {train_default('momentum'):g}).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="L2 weight decay.")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option("--lr-schedule", help=f"Learning-rate schedule (default: {train_default('lr_schedule')}): {names(LR_SCHEDULES)}.")] = None,
    milestones: Annotated[Optional[str], typer.Option("--milestones", help="multistep: comma-separated epochs after which lr is multiplied by --gamma, e.g. 150,250.")] = None,
    gamma: Annotated[Optional[float], typer.Option("--gamma", help=f"multistep: lr factor at each milestone (default: {train_default('gamma'):g}).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Training mini-batch size; under torchrun per process (the global batch is N times it).")] = None,
    val_fraction: Annotated[Optional[float], typer.Option("--val-fraction", help="Fraction of the training set held out for validation.")] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", metavar="", help=f"Training augmentation (crops and flips where the dataset has them) (default: {flag('augment', default(TrainSettings, 'augment'))}).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help=f"Data-loading worker processes (default: {default(TrainSettings, 'workers')}). With 0, in-memory datasets (CIFAR, MNIST, SVHN, digits, synthetic) are held on the training device and augmented there in whole batches; N > 0 keeps them on the CPU for N workers. Image folders are decoded by the workers.")] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", metavar="", help=f"Mixed precision (autocast, bfloat16 where supported) on CUDA; no effect on CPU (default: {flag('amp', default(TrainSettings, 'amp'))}).")] = None,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", metavar="", help=f"channels_last memory format for conv nets (faster on recent GPUs) (default: {flag('channels-last', default(TrainSettings, 'channels_last'))}).")] = None,
    compile_: Annotated[Optional[bool], typer.Option("--compile/--no-compile", metavar="", help=f"torch.compile the model (CUDA graphs on a GPU) for full batches; the last, smaller batch of an epoch runs eagerly. The first epoch includes the compilation. Where torch.compile cannot run, a warning and eager training (default: {flag('compile', default(TrainSettings, 'compile'))}).")] = None,
    save_every: Annotated[Optional[int], typer.Option("--save-every", help=f"Epochs between partial checkpoints; 0: only when interrupted (default: {default(TrainSettings, 'save_every')}).")] = None,
    sync_bn: Annotated[Optional[bool], typer.Option("--sync-bn/--no-sync-bn", metavar="", help=f"Under torchrun on CUDA: batch-norm statistics over all processes' batches (SyncBatchNorm); refused on CPU under torchrun, no effect in a single process (default: {flag('sync-bn', default(TrainSettings, 'sync_bn'))}).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the data order, augmentation and validation split (default: the checkpoint's).")] = None,
    device: DeviceOpt = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Dataset root (default: the checkpoint's, $FORCE_DATA or the user cache).")] = None,
    download: Annotated[Optional[bool], typer.Option("--download/--no-download", metavar="", help="Download a missing dataset (default: --download).")] = None,
    recipe: RecipeOpt = None,
    log: Annotated[Optional[Path], typer.Option("--log-file", parser=path, metavar="<path>", help="Append one JSON line per epoch to this file (.jsonl).")] = None,
    old_log: Annotated[Optional[Path], typer.Option("--log", parser=path, hidden=True, help="Old spelling of --log-file; torchrun refuses it.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar="", help="Replace an existing output (and a stale partial checkpoint).")] = False,
    compact: CompactOpt = False,
    trust_model_code: TrustOpt = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Train a pruned checkpoint with its masks enforced; write a trained checkpoint and print its path."""
    log = log if log is not None else old_log
    flags = dict(epochs=epochs, lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                 lr_schedule=lr_schedule, milestones=_milestones(milestones), gamma=gamma, batch_size=batch_size,
                 val_fraction=val_fraction, augment=augment, workers=workers, amp=amp, channels_last=channels_last,
                 compile=compile_, save_every=save_every, sync_bn=sync_bn)
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
    if (checkpoint is None) != (resume is None):  # the library names the mistake when both or neither are given
        check_existing(resume if resume is not None else checkpoint)
    apply_threads(threads)
    # torch-free start-up: the library loads torch, so it is imported once the input is known to be there
    from force_cli.device import resolve_device
    from force_cli.distributed import is_main, launch_from_env
    from force_cli.training.job import train_checkpoint
    from force_cli.training.loop import TrainCallbacks

    quiet = quiet or not is_main()  # under torchrun only rank 0 reports (and prints the path)
    wants_amp = settings.get("amp") if isinstance(settings, dict) else settings.amp
    if wants_amp and not quiet and resolve_device(device).type != "cuda":
        stderr.print("note: --amp has no effect on CPU", highlight=False)
    wants_sync_bn = settings.get("sync_bn") if isinstance(settings, dict) else settings.sync_bn
    if wants_sync_bn and not quiet and launch_from_env() is None:
        stderr.print("note: --sync-bn has no effect in a single process (it acts under torchrun)", highlight=False)

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

        # a divergence or an interruption (progress saved) reaches run_wrapper, which names its exit code
        result = train_checkpoint(
            checkpoint, output, settings, resume=resume, seed=pick(seed, "seed"),
            data_dir=pick(data_dir, "data_dir"), download=pick(download, "download", True), device=device,
            overwrite=overwrite, log=log, callbacks=TrainCallbacks(on_start=on_start, on_batch=on_batch, on_epoch=on_epoch, on_warning=warn),
            compact=compact,
        )
    if not quiet:
        m = result.metrics
        stderr.print(f"trained {len(result.history)} epochs: test accuracy {m['test_acc']:.2%} (loss {m['test_loss']:.4f})",
                     highlight=False)
    if is_main():
        print(result.path)
