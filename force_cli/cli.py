"""The `force` command: parse, call the library, render. No algorithm lives here.

Results go to stdout (a checkpoint path, a table, or one JSON document); progress and errors go
to stderr. A ForceError from the library becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import force_cli
from force_cli.config import PruneConfig, load_recipe, resolve
from force_cli.data import DATASETS
from force_cli.errors import ForceError, UnknownNameError
from force_cli.atomic import remove_stale
from force_cli.locking import hold
from force_cli.safe_text import literal, one_line
from force_cli.models import INIT_SCHEMES, MODELS
from force_cli.pruning import METHODS, SCHEDULES
from force_cli.pruning.ablation import ABLATIONS
from force_cli.pruning.budgets import BUDGET_HELP
from force_cli.pruning.objectives import OBJECTIVES
from force_cli.pruning.ties import TIE_RULES
from force_cli.evaluation import SPLITS
from force_cli.export import FORMATS as EXPORT_FORMATS
from force_cli.training.settings import LR_SCHEDULES, OPTIMIZERS, TRAIN_DEFAULTS

class OneLineErrors(TyperGroup):
    """Usage errors (unknown option, missing value, bad type) as one line on stderr, exit 2,
    instead of Typer's five-line box; the one line names the command's --help."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:  # Typer >= 0.20 vendors click; older Typer uses click itself
            from typer._click import exceptions
        except ImportError:
            from click import exceptions
        NoArgsIsHelpError = getattr(exceptions, "NoArgsIsHelpError", ())
        ClickException = exceptions.ClickException
        try:
            code = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:
            exc.show()
            code = exc.exit_code
        except ClickException as exc:
            where = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "force"
            message = exc.format_message().rstrip(".")
            stderr.print(Text.assemble(("error: ", "bold red"), one_line(f"{message}; see '{where} --help'")),
                         highlight=False, soft_wrap=True)
            code = exc.exit_code
        except typer.Abort:
            code = 130
        code = code if isinstance(code, int) else 0
        if not standalone_mode:
            return code
        sys.exit(code)


app = typer.Typer(
    name="force",
    cls=OneLineErrors,
    help="Prune neural networks at initialization (FORCE, Iterative SNIP, SNIP, GraSP, SynFlow, ...) "
    "into portable sparse checkpoints, then train, evaluate and inspect them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

class _Stdout(Console):
    """rich exits with 1 when stdout's reader goes away; hand that to ``user_errors`` (exit 141)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


stdout = _Stdout(soft_wrap=True)
stderr = Console(stderr=True)


def _names(registry) -> str:
    return ", ".join(registry)


def _saliency_loss_help() -> str:
    """--saliency-loss help: the choices, then each data-driven method's default and why."""
    groups: dict[tuple[str, str], list[str]] = {}
    for m in METHODS.values():
        if m.objective is not None:
            groups.setdefault((m.objective.describe(), m.objective_reason), []).append(m.name)
    defaults = "; ".join(f"{', '.join(names)}: {objective} ({reason})" for (objective, reason), names in groups.items())
    return (f"Objective whose gradients the scores use: {_names(OBJECTIVES)} (true-logit: minus the mean "
            f"true-class logit). Default: each method's reference code's, i.e. {defaults}.")


def fail(message: str, code: int = 2) -> typer.Exit:
    """One line on stderr, printed literally (no markup, control characters made visible)."""
    stderr.print(Text.assemble(("error: ", "bold red"), one_line(message)), highlight=False, soft_wrap=True)
    return typer.Exit(code)


def stopped(message: str, code: int) -> typer.Exit:
    """An interruption is not an error: one line without the 'error:' prefix, exit 130 or 143."""
    stderr.print(one_line(message), highlight=False, soft_wrap=True, markup=False)
    return typer.Exit(code)


def warn(message: str) -> None:
    """One line on stderr for something odd but usable in the input (printed even with --quiet)."""
    stderr.print(Text.assemble(("warning: ", "yellow"), one_line(message)), highlight=False, soft_wrap=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean-up runs; exit code 143."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _interrupted(exc: KeyboardInterrupt) -> typer.Exit:
    name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
    written = getattr(exc, "written", None)
    if written is not None:
        return stopped(f"interrupted ({name}) just after {written} was written completely", code)
    return stopped(f"interrupted ({name}); no file was written or left half-written", code)


def _stdout_closed() -> typer.Exit:
    """The reader of stdout went away (`force inspect X | head -1`): stop quietly, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return typer.Exit(128 + signal.SIGPIPE)


def user_errors(command):
    """Turn library errors into one line + exit 2, Ctrl-C into exit 130 and SIGTERM into exit 143,
    a closed stdout into a quiet exit 141, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
        try:
            result = command(*args, **kwargs)
            sys.stdout.flush()
            return result
        except ForceError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt as exc:
            raise _interrupted(exc) from None
        except BrokenPipeError:
            raise _stdout_closed() from None
        except OSError as exc:  # a last resort: every expected OS error is already a ForceError
            where = f" ({exc.filename})" if exc.filename else ""
            raise fail(f"{exc.strerror or exc}{where}; check the path and free space, then retry") from None
        except (MemoryError, RecursionError) as exc:
            raise fail(f"out of memory or too deeply nested input ({type(exc).__name__}); "
                       "check the input's sizes") from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # a bug: still one line, exit 1; FORCE_DEBUG=1 shows the traceback
            if os.environ.get("FORCE_DEBUG"):
                raise
            raise fail(f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}; this is a "
                       "bug in force-cli, please report it (FORCE_DEBUG=1 shows the traceback)", 1) from None
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

    return wrapper


def _path(text: str) -> Path:
    """A path argument; an empty one (``force train "$(force prune ...)"`` after a failed prune)
    is its own clear error rather than the current folder."""
    if not text.strip():
        raise typer.BadParameter("the path is empty (did the command that should have produced it fail?)")
    return Path(text)


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


RecipeOpt = Annotated[Optional[Path], typer.Option("--recipe", parser=_path, metavar="<path>", help="YAML recipe supplying defaults; flags given here win.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress bar.")]
JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="Print one JSON document to stdout (for jq).")]
CheckpointArg = Annotated[Path, typer.Argument(parser=_path, metavar="CHECKPOINT", help="A force checkpoint (.safetensors).")]
CompactOpt = Annotated[bool, typer.Option("--compact", metavar="", help="Write the compact variant: kept values plus a bit-packed mask or gap codes.")]
TrustOpt = Annotated[bool, typer.Option("--trust-model-code", metavar="", help="Allow a checkpoint whose model is an import path (package.module:factory) to import and run that code.")]


def honours_trust(command):
    """Let the command rebuild a checkpoint's import-path model only when given --trust-model-code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from force_cli.models.refs import trusted_model_code

        with trusted_model_code(bool(kwargs.get("trust_model_code"))):
            return command(*args, **kwargs)

    return wrapper


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
    "  force train \"$(force prune --model vgg19 --sparsity 0.99 --quiet)\"\n\n"
    "  force prune -m lenet300 -d digits -s 0.99 --method random --budget erk -o erk-random.safetensors\n\n"
    "  force prune -m vgg19 -s 0.995 --steps 10 --ties keep   # the paper code's masks, bit for bit",
)
@user_errors
def prune(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help=f"Model (required unless the recipe sets it): {_names(MODELS)}; or torchvision:NAME; or package.module:factory (a function returning an nn.Module).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help=f"Dataset (default: cifar10): {_names(DATASETS)}.")] = None,
    sparsity: Annotated[Optional[float], typer.Option("--sparsity", "-s", help="Fraction of prunable weights to remove, in [0, 1) (required unless the recipe sets it).")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help=f"Criterion (default: force): {_names(METHODS)}.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Pruning steps of iterative methods (default: each method's: " + ", ".join(f"{m.name} {m.default_steps}" for m in METHODS.values() if m.iterative) + ").")] = None,
    schedule: Annotated[Optional[str], typer.Option("--schedule", help=f"Density schedule (default: exp): {_names(SCHEDULES)}.")] = None,
    batches: Annotated[Optional[int], typer.Option("--batches", help="Mini-batches averaged per score (default: 1).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Mini-batch size (default: 128).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for init, data order and random pruning (default: 0).")] = None,
    init: Annotated[Optional[str], typer.Option("--init", help=f"Weight init (default: kaiming-normal): {_names(INIT_SCHEMES)}.")] = None,
    saliency_loss: Annotated[Optional[str], typer.Option("--saliency-loss", help=_saliency_loss_help())] = None,
    saliency_temperature: Annotated[Optional[float], typer.Option("--saliency-temperature", help="Temperature T of --saliency-loss cross-entropy (default: the method's, 200 for grasp, else 1); given alone it selects cross-entropy.")] = None,
    val_fraction: Annotated[Optional[float], typer.Option("--val-fraction", help="Fraction of the training set `train` will hold out for validation (same seed); pruning never draws from it (default: the dataset's training default).")] = None,
    budget: Annotated[Optional[str], typer.Option("--budget", help="Per-layer budget (default: global): " + "; ".join(f"{k}: {v}" for k, v in BUDGET_HELP.items()) + ".")] = None,
    ties: Annotated[Optional[str], typer.Option("--ties", help="Scores tied at a step's threshold (default: exact): " + "; ".join(f"{k}: {v}" for k, v in TIE_RULES.items()) + ".")] = None,
    allow_disconnected: Annotated[Optional[bool], typer.Option("--allow-disconnected", metavar="", help="Write the checkpoint even if pruning leaves no input-to-output path or an empty output layer (default: fail with exit code 1).")] = None,
    device: DeviceOpt = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Dataset root (default: $FORCE_DATA or the user cache).")] = None,
    download: Annotated[Optional[bool], typer.Option("--download/--no-download", metavar="", help="Download a missing dataset (default: --download).")] = None,
    recipe: RecipeOpt = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", parser=_path, metavar="<path>", help="Checkpoint to write (default: MODEL-DATASET-METHOD-sSPARSITY-seedSEED.safetensors).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar="", help="Replace an existing output file.")] = False,
    compact: CompactOpt = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Prune a freshly initialized network and write a sparse checkpoint; print its path."""
    from force_cli.pruning.job import prune_to_checkpoint

    flags = dict(model=model, dataset=dataset, sparsity=sparsity, method=method, steps=steps, schedule=schedule,
                 batches=batches, batch_size=batch_size, seed=seed, init=init, device=device, data_dir=data_dir,
                 download=download, saliency_loss=saliency_loss, saliency_temperature=saliency_temperature,
                 val_fraction=val_fraction, allow_disconnected=allow_disconnected, budget=budget, ties=ties)
    defaults = load_recipe(recipe).settings_for("prune") if recipe else None
    cfg = resolve(PruneConfig, defaults, flags)
    output = _prune_output(cfg, output, overwrite)
    from force_cli.distributed import is_main

    main = is_main()  # under torchrun only rank 0 locks, writes and reports
    quiet = quiet or not main
    with hold((output, "output")) if main else contextlib.nullcontext(), progress_bar(quiet) as bar:
        if main:
            remove_stale(output)
        task = None

        def on_start(total_steps: int):
            nonlocal task
            task = bar.add_task(f"pruning {cfg.model} ({cfg.method})", total=total_steps, status="")

        def on_step(info):
            bar.update(task, completed=info.step, status=f"density {info.density:.4%}")

        path, result = prune_to_checkpoint(cfg, output, overwrite=overwrite, on_step=on_step, on_start=on_start,
                                           compact=compact)
    if not main:
        return
    for warning in result.warnings:
        warn(warning)
    if not quiet:
        stderr.print(f"kept {result.kept:,} of {result.total:,} weights (sparsity {result.sparsity:.4%})", highlight=False)
    print(path)


@app.command(
    epilog="Checks (Frankle et al., ICLR 2021, 'Why are we missing the mark?'):\n\n"
    + "\n\n".join(f"  --{name}: {what}" for name, what in ABLATIONS.items())
    + "\n\nExamples:\n\n"
    "  force ablate lenet.safetensors --shuffle-within-layers -o lenet-shuffled.safetensors\n\n"
    "  force ablate lenet.safetensors --reinit --seed 7 -o lenet-reinit.safetensors\n\n"
    "  force train \"$(force ablate lenet.safetensors --invert-scores -o lenet-inverted.safetensors -q)\"",
)
@user_errors
@honours_trust
def ablate(
    checkpoint: CheckpointArg,
    output: Annotated[Path, typer.Option("--output", "-o", parser=_path, metavar="<path>", help="Checkpoint to write (required).")],
    shuffle_within_layers: Annotated[bool, typer.Option("--shuffle-within-layers", metavar="", help="Keep each layer's count of weights, at random positions.")] = False,
    reinit: Annotated[bool, typer.Option("--reinit", metavar="", help="Keep the mask, draw the weights afresh.")] = False,
    invert_scores: Annotated[bool, typer.Option("--invert-scores", metavar="", help="Prune again with the same settings, keeping the lowest scores.")] = False,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the shuffle or of the new weights (default: the checkpoint's seed + 1).")] = None,
    device: DeviceOpt = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Dataset root for --invert-scores (default: the checkpoint's).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar="", help="Replace an existing output file.")] = False,
    compact: CompactOpt = False,
    trust_model_code: TrustOpt = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Apply one sanity check to a pruned checkpoint and write the result; print its path."""
    from force_cli.config import check_int_bounds
    from force_cli.pruning.ablation import ablate_checkpoint

    chosen = [name for name, on in (("shuffle-within-layers", shuffle_within_layers), ("reinit", reinit),
                                    ("invert-scores", invert_scores)) if on]
    if len(chosen) != 1:
        raise ForceError("give exactly one of --shuffle-within-layers, --reinit and --invert-scores "
                         f"(got {len(chosen)}); run one ablate per check")
    check_int_bounds("seed", seed)
    with hold((output, "output")):
        remove_stale(output)
        path, record = ablate_checkpoint(checkpoint, chosen[0], output, seed=seed, overwrite=overwrite,
                                         compact=compact, device=device, data_dir=data_dir)
    if not quiet:
        seeded = f" (seed {record['seed']})" if record["seed"] is not None else ""
        stderr.print(one_line(f"{chosen[0]} of {checkpoint}{seeded}"), highlight=False, markup=False)
    print(path)


@app.command(
    epilog="Examples:\n\n"
    "  force inspect lenet.safetensors\n\n"
    "  force inspect lenet.safetensors --json | jq .totals.effective_density",
)
@user_errors
@honours_trust
def inspect(
    checkpoint: CheckpointArg,
    json_output: JsonOpt = False,
    trust_model_code: TrustOpt = False,
    threads: ThreadsOpt = None,
):
    """Per-layer density and effective density of a checkpoint, with its metadata."""
    from force_cli.checkpoint import load_checkpoint
    from force_cli.report import effective_masks, json_document, render, summary
    from force_cli.restore import input_shape, model_from_checkpoint

    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    effective = effective_masks(model, ckpt.masks, input_shape(ckpt.metadata))
    report = summary(ckpt.masks, effective, ckpt.metadata, str(checkpoint)) | {"warnings": ckpt.warnings}
    for message in ckpt.warnings:
        warn(message)
    if json_output:
        print(json_document(report))
    else:
        render(report, stdout)


def _prune_output(cfg: PruneConfig, output: Path | None, overwrite: bool) -> Path:
    """The checkpoint `prune` will write, checked before any work; names are validated first,
    so that a bad dataset name is reported as such and not as a missing output folder."""
    from force_cli.checkpoint import check_new_output
    from force_cli.pruning.job import default_output, validate

    validate(cfg)
    if str(cfg.dataset).strip().lower().replace("_", "-") not in DATASETS:
        raise UnknownNameError("dataset", cfg.dataset, DATASETS)
    output = output if output is not None else default_output(cfg)
    check_new_output(output, overwrite)
    return output


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
    "  force train lenet.safetensors --epochs 30 --log-file lenet.jsonl\n\n"
    "  force train \"$(force prune --model vgg19 --sparsity 0.99 --quiet)\" --amp --workers 8\n\n"
    "  force train --resume lenet-trained.partial.safetensors\n\n"
    "  torchrun --standalone --nproc-per-node 4 $(which force) train vgg19.safetensors --batch-size 32 --sync-bn",
)
@user_errors
@honours_trust
def train(
    checkpoint: Annotated[Optional[Path], typer.Argument(parser=_path, metavar="CHECKPOINT", help="Checkpoint to train (made by `force prune`).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", parser=_path, metavar="<path>", help="Trained checkpoint to write (default: CHECKPOINT-trained.safetensors).")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", parser=_path, metavar="<path>", help="Continue the partial checkpoint of an interrupted run (instead of CHECKPOINT).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs to train (default: per dataset, below).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Initial learning rate.")] = None,
    optimizer: Annotated[Optional[str], typer.Option("--optimizer", help=f"Optimizer (default: sgd): {_names(OPTIMIZERS)}.")] = None,
    momentum: Annotated[Optional[float], typer.Option("--momentum", help="SGD momentum (default: 0.9).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="L2 weight decay.")] = None,
    lr_schedule: Annotated[Optional[str], typer.Option("--lr-schedule", help=f"Learning-rate schedule (default: multistep): {_names(LR_SCHEDULES)}.")] = None,
    milestones: Annotated[Optional[str], typer.Option("--milestones", help="multistep: comma-separated epochs after which lr is multiplied by --gamma, e.g. 150,250.")] = None,
    gamma: Annotated[Optional[float], typer.Option("--gamma", help="multistep: lr factor at each milestone (default: 0.1).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Training mini-batch size; under torchrun per process (the global batch is N times it).")] = None,
    val_fraction: Annotated[Optional[float], typer.Option("--val-fraction", help="Fraction of the training set held out for validation.")] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", metavar="", help="Training augmentation (crops and flips where the dataset has them) (default: --augment).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Data-loading worker processes (default: 0). With 0, in-memory datasets (CIFAR, MNIST, SVHN, digits, synthetic) are held on the training device and augmented there in whole batches; N > 0 keeps them on the CPU for N workers. Image folders are decoded by the workers.")] = None,
    amp: Annotated[Optional[bool], typer.Option("--amp/--no-amp", metavar="", help="Mixed precision (autocast, bfloat16 where supported) on CUDA; no effect on CPU (default: --no-amp).")] = None,
    channels_last: Annotated[Optional[bool], typer.Option("--channels-last/--no-channels-last", metavar="", help="channels_last memory format for conv nets (faster on recent GPUs) (default: --no-channels-last).")] = None,
    save_every: Annotated[Optional[int], typer.Option("--save-every", help="Epochs between partial checkpoints; 0: only when interrupted (default: 1).")] = None,
    sync_bn: Annotated[Optional[bool], typer.Option("--sync-bn/--no-sync-bn", metavar="", help="Under torchrun on CUDA: batch-norm statistics over all processes' batches (SyncBatchNorm); refused on CPU under torchrun, no effect in a single process (default: --no-sync-bn).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the data order, augmentation and validation split (default: the checkpoint's).")] = None,
    device: DeviceOpt = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Dataset root (default: the checkpoint's, $FORCE_DATA or the user cache).")] = None,
    download: Annotated[Optional[bool], typer.Option("--download/--no-download", metavar="", help="Download a missing dataset (default: --download).")] = None,
    recipe: RecipeOpt = None,
    log: Annotated[Optional[Path], typer.Option("--log-file", parser=_path, metavar="<path>", help="Append one JSON line per epoch to this file (.jsonl).")] = None,
    old_log: Annotated[Optional[Path], typer.Option("--log", parser=_path, hidden=True, help="Old spelling of --log-file; torchrun refuses it.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar="", help="Replace an existing output (and a stale partial checkpoint).")] = False,
    compact: CompactOpt = False,
    trust_model_code: TrustOpt = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Train a pruned checkpoint with its masks enforced; write a trained checkpoint and print its path."""
    from force_cli.config import TrainSettings
    from force_cli.device import resolve_device
    from force_cli.training.job import TrainingInterrupted, train_checkpoint
    from force_cli.training.loop import TrainCallbacks, TrainingDiverged

    log = log if log is not None else old_log
    from force_cli.distributed import is_main, launch_from_env

    quiet = quiet or not is_main()  # under torchrun only rank 0 reports (and prints the path)
    flags = dict(epochs=epochs, lr=lr, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
                 lr_schedule=lr_schedule, milestones=_milestones(milestones), gamma=gamma, batch_size=batch_size,
                 val_fraction=val_fraction, augment=augment, workers=workers, amp=amp, channels_last=channels_last,
                 save_every=save_every, sync_bn=sync_bn)
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

        try:
            result = train_checkpoint(
                checkpoint, output, settings, resume=resume, seed=pick(seed, "seed"),
                data_dir=pick(data_dir, "data_dir"), download=pick(download, "download", True), device=device,
                overwrite=overwrite, log=log, callbacks=TrainCallbacks(on_start=on_start, on_batch=on_batch, on_epoch=on_epoch, on_warning=warn),
                compact=compact,
            )
        except TrainingInterrupted as exc:
            if not is_main():  # rank 0 says where the progress went
                raise typer.Exit(exc.exit_code) from None
            raise stopped(str(exc), exc.exit_code) from None
        except TrainingDiverged as exc:
            raise fail(str(exc), 1) from None
    if not quiet:
        m = result.metrics
        stderr.print(f"trained {len(result.history)} epochs: test accuracy {m['test_acc']:.2%} (loss {m['test_loss']:.4f})",
                     highlight=False)
    if is_main():
        print(result.path)


@app.command(
    "eval",
    epilog="Examples:\n\n"
    "  force eval lenet-trained.safetensors\n\n"
    "  force eval lenet-trained.safetensors --split val --json | jq .top1",
)
@user_errors
@honours_trust
def eval_command(
    checkpoint: CheckpointArg,
    split: Annotated[str, typer.Option("--split", help=f"Which split (default: test): {', '.join(SPLITS)} (val: the part held out during training).", show_default=False)] = "test",
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Evaluate on another dataset with the same classes and image shape (default: the checkpoint's).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Evaluation mini-batch size (default: 256).", show_default=False)] = 256,
    workers: Annotated[int, typer.Option("--workers", help="Data-loading worker processes (default: 0).", show_default=False)] = 0,
    device: DeviceOpt = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Dataset root (default: the checkpoint's, $FORCE_DATA or the user cache).")] = None,
    download: Annotated[bool, typer.Option("--download/--no-download", metavar="", help="Download a missing dataset (default: --download).", show_default=False)] = True,
    json_output: JsonOpt = False,
    trust_model_code: TrustOpt = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Top-1 and top-5 accuracy, loss, samples and density of a checkpoint on a dataset split."""
    from rich.table import Table

    from force_cli import distributed
    from force_cli.evaluation import evaluate_checkpoint
    from force_cli.report import json_document

    main_rank = distributed.is_main()  # under torchrun only rank 0 shows progress and prints the result
    with progress_bar(quiet or not main_rank) as bar:
        task = None

        def on_start(samples: int):
            nonlocal task
            task = bar.add_task(f"evaluating ({split})", total=samples, status="")

        report = evaluate_checkpoint(
            checkpoint, split=split, dataset=dataset, data_dir=data_dir, download=download,
            device=device or "auto", batch_size=batch_size, workers=workers, on_start=on_start,
            on_batch=lambda done: bar.update(task, completed=done), on_warning=warn if main_rank else None,
        )
    if not main_rank:
        return
    if json_output:
        print(json_document(report))
        return
    table = Table(title=literal(f"{report['checkpoint']}: {report['model']} on {report['dataset']} ({report['split']})"))
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
    recipe: Annotated[Optional[Path], typer.Argument(parser=_path, metavar="RECIPE", help="YAML recipe with a 'sweep:' section (methods, sparsities, seeds).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", parser=_path, metavar="<path>", help="Folder for checkpoints and results (default: runs/RECIPE-NAME).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", metavar="", help="List the cells and whether each is done; run nothing.")] = False,
    report: Annotated[Optional[Path], typer.Option("--report", parser=_path, metavar="<path>", help="Only (re)write the table and plot of this sweep folder.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", metavar="N", help="Cells run at once, each in its own worker process with an equal share of the threads (and, where there are GPUs, the GPUs in turn: worker i sees only GPU i mod G); same results as one at a time.")] = 1,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Run prune -> train -> eval for every method x sparsity x seed of a recipe; resumable.

    Re-running the same command skips finished cells and resumes an interrupted one. At the end
    (or with --report) a mean ± std table is printed and results.md, .csv, .png and .svg are written.
    """
    from force_cli.sweep import SweepHooks, check_jobs, expand_grid, finished_cells, run_sweep, sweep_settings
    from force_cli.training.job import TrainingInterrupted
    from force_cli.training.loop import TrainingDiverged
    from force_cli.distributed import launch_from_env

    if launch_from_env() is not None:
        raise ForceError("force sweep does not run under torchrun; run it without torchrun, with --jobs N to use "
                         "several GPUs, or run each cell's prune and train under torchrun (README: 'Sweeps on many GPUs')")

    if report is not None:
        if not report.is_dir():
            raise ForceError(f"--report '{report}' is not a folder; give the --out folder of a sweep")
        with hold((report, "sweep folder")):
            _write_sweep_report(report, "")
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
        stderr.print(one_line(f"{len(cells)} cells, {len(done & {c.key for c in cells})} done, results in {out}"),
                     highlight=False, markup=False)
        return
    from force_cli.sweep import check_out_dir, check_recipe

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
            from force_cli.models.refs import trusted_model_code

            with trusted_model_code(only=str(loaded.common.get("model"))):
                records = run_sweep(loaded, out, SweepHooks(on_cell_start=on_cell_start, on_cell_done=on_cell_done,
                                                            on_warning=on_warning), jobs=jobs)
        except TrainingInterrupted as exc:
            raise stopped(f"sweep interrupted ({exc}); run the same command again to continue", exc.exit_code) from None
        except TrainingDiverged as exc:
            raise fail(f"{exc}; the finished cells are kept in {out}", 1) from None
        except KeyboardInterrupt as exc:  # outside training (pruning or evaluating a cell)
            name, code = ("SIGTERM", 143) if isinstance(exc, Terminated) else ("Ctrl-C", 130)
            raise stopped(f"sweep interrupted ({name}); the finished cells are kept in {out}; "
                          "run the same command again to continue", code) from None
        if not quiet:
            stderr.print(one_line(f"{len(records)} cells run now; results in {out}"), highlight=False, markup=False)
        _write_sweep_report(out, settings.title)


def _write_sweep_report(folder: Path, title: str) -> None:
    from force_cli.sweep_report import write_report

    written = write_report(folder, stdout, title=title)
    stderr.print(one_line("wrote " + ", ".join(str(p) for p in written.values())), highlight=False, soft_wrap=True,
                 markup=False)


@app.command(
    epilog="Formats:\n\n" + "\n\n".join(f"  {name}: {what}" for name, what in EXPORT_FORMATS.items())
    + "\n\nExamples:\n\n"
    "  force export lenet.safetensors --to compact -o lenet-compact.safetensors\n\n"
    "  force export lenet-trained.safetensors --to state-dict -o lenet-weights.safetensors",
)
@user_errors
def export(
    checkpoint: CheckpointArg,
    to: Annotated[str, typer.Option("--to", help="Format to write: compact, dense, state-dict or torch-prune (below).")],
    output: Annotated[Path, typer.Option("--output", "-o", parser=_path, metavar="<path>", help="File to write (required).")],
    overwrite: Annotated[bool, typer.Option("--overwrite", metavar="", help="Replace an existing output file.")] = False,
):
    """Convert a checkpoint: compact <-> dense (lossless), or a plain state_dict / torch.nn.utils.prune layout; print the path."""
    from force_cli.export import export_checkpoint

    with hold((output, "output")):
        remove_stale(output)
        path = export_checkpoint(checkpoint, to, output, overwrite=overwrite)
    print(path)


def main():
    """The `force` command. Ctrl-C or a closed stdout outside a command (while parsing) ends quietly too."""
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted (Ctrl-C)\n")
        sys.exit(130)
    except BrokenPipeError:
        raise SystemExit(_stdout_closed().exit_code) from None


if __name__ == "__main__":
    main()
