"""`force train` as a library call: a checkpoint in, a trained checkpoint out, resumable.

    from force_cli.training.job import train_checkpoint
    result = train_checkpoint("lenet.safetensors", settings=TrainSettings(epochs=30))

Files (``X.safetensors`` the input; every name from ``checkpoint/paths.py``):
  * output: ``-o`` or ``X-trained.safetensors`` next to the input; never the input itself, and an
    existing file only with ``overwrite``;
  * partial checkpoint: the output's name with ``.partial.safetensors`` (``X-trained.partial.safetensors``),
    stage ``partial``, written atomically every ``save_every`` epochs and when stopped (Ctrl-C,
    SIGTERM, a ``StopFlag``); it holds the weights, the masks, the optimizer state as tensors
    (``state:optimizer.*``) with its JSON structure in the ``training.resume`` metadata, the
    epoch and batch reached and torch's RNG state (``state:rng.*``). It is deleted once the
    trained checkpoint is written;
  * log: one JSON line per epoch appended to ``log``.

Resuming (``resume=PARTIAL``) continues with the partial's settings and seed, so it ends with the
same weights, bit for bit, as an uninterrupted run on the same device. Settings passed on resume
override the saved ones (not the optimizer), which changes the result accordingly. A partial
written under torchrun resumes under torchrun with the same number of processes (see ``ddp``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from force_cli import distributed
from force_cli.checkpoint import (
    Checkpoint,
    check_new_output,
    recomputed_sparsity,
    save_checkpoint,
)
from force_cli.atomic import remove_stale
from force_cli.checkpoint.metadata import check_seed, provenance
from force_cli.checkpoint.paths import PARTIAL_SUFFIX, SUFFIX, partial_path, same_file, trained_output
from force_cli.config import TrainSettings, check_int_bounds, check_section
from force_cli.data import dataset_info, holdout, load_datasets
from force_cli.device import resolve_device
from force_cli.errors import CheckpointError, ConfigError, OutputError, TrainingDiverged, TrainingInterrupted
from force_cli.locking import hold
from force_cli.evaluation import check_dataset_fits, recorded_data_dir
from force_cli.restore import load_for_model, model_from_checkpoint
from force_cli.training import ddp, epoch_log
from force_cli.training.loop import Interrupted, TrainCallbacks, Trainer
from force_cli.training.settings import complete_settings
from force_cli.training.state import StopFlag, stop_on_signals

#: Metadata fields that describe a training run; not carried over from an input checkpoint.
_RUN_FIELDS = ("format", "stage", "training", "history", "metrics", "created")


@dataclass
class TrainResult:
    path: Path  # the trained checkpoint
    history: list[dict]  # one record per epoch (training.EPOCH_FIELDS)
    metrics: dict  # the last epoch's losses and accuracies
    settings: TrainSettings  # complete
    seed: int


def _chosen(settings: TrainSettings | Mapping[str, Any] | None) -> dict[str, Any]:
    if settings is None:
        return {}
    if is_dataclass(settings):
        settings = asdict(settings)
    known = {f.name for f in fields(TrainSettings)}
    unknown = [k for k in settings if k not in known]
    if unknown:
        raise ConfigError(f"unknown training setting '{unknown[0]}'; known settings are: {', '.join(sorted(known))}")
    return {k: v for k, v in settings.items() if v is not None}


@dataclass(frozen=True)
class TrainPlan:
    """What a run trains and writes, decided once from the pruned checkpoint or the partial one
    (``plan_run``) before anything is locked or loaded."""

    ckpt: Checkpoint  # the input: a pruned (or trained) checkpoint, or a partial one to resume
    source: Path  # its path
    output: Path  # the trained checkpoint to write
    partial: Path  # where progress is saved
    settings: TrainSettings  # chosen and saved ones; None fields: the dataset's defaults
    seed: int
    origin: str  # the pruned checkpoint the run started from (recorded in the metadata)
    state: dict | None  # a partial's training state (``Trainer.state()``); None: a fresh run
    recorded_world_size: int | None  # the processes that wrote the partial; None: a fresh run


def _resume_state(ckpt: Checkpoint, path: Path) -> tuple[dict, dict]:
    """(training metadata, resume structure) of a partial checkpoint, or a one-line error."""
    training = ckpt.metadata.get("training")
    resume = training.get("resume") if isinstance(training, dict) else None
    if ckpt.stage != "partial":
        raise CheckpointError(
            f"'{path}' holds no training state (stage '{ckpt.stage}'); --resume takes the partial checkpoint "
            f"(*{PARTIAL_SUFFIX}) of an interrupted `force train`; to train this file run: force train {path}"
        )
    if not isinstance(resume, dict) or not ckpt.extra:
        source = training.get("source") if isinstance(training, dict) else None
        start = f"start again from the pruned checkpoint: force train {source}" if isinstance(source, str) and source \
            else "start again from the pruned checkpoint with `force train`"
        raise CheckpointError(f"the partial checkpoint '{path}' has lost its training state, so it cannot be "
                              f"resumed; {start}")
    check_seed(training.get("seed", 0), f"the partial checkpoint '{path}'")
    return training, resume


def _saved_settings(training: dict, source: Path, chosen: dict) -> dict:
    """A partial's training settings, checked; the optimizer cannot change on resume."""
    saved = {f.name: training[f.name] for f in fields(TrainSettings) if f.name in training}
    try:
        saved = check_section(saved, TrainSettings, f"'{source}': training settings")
    except ConfigError as exc:
        raise CheckpointError(f"{exc}; the partial checkpoint is corrupt") from None
    if chosen.get("optimizer", saved.get("optimizer")) != saved.get("optimizer"):
        raise ConfigError(f"cannot switch the optimizer from '{saved.get('optimizer')}' when resuming; "
                          f"start a new run from the pruned checkpoint instead")
    return saved


def plan_run(checkpoint: str | Path | None, output: str | Path | None, settings, resume: str | Path | None,
             seed: int | None) -> TrainPlan:
    """Load the input and decide the run's settings, seed and files; refuse bad input (one line).

    A fresh run starts from the pruned checkpoint's holdout (``data/holdout.py``) and seed; a resumed
    one from the partial's saved ``training`` block. Settings given win over both."""
    if (checkpoint is None) == (resume is None):
        raise ConfigError("give either a checkpoint to train or --resume PARTIAL, not both" if checkpoint is not None
                          else "no checkpoint given; pass the checkpoint to train (made by `force prune`) or --resume PARTIAL")
    source = Path(resume if resume is not None else checkpoint)
    ckpt = load_for_model(source)
    chosen = _chosen(settings)
    if resume is not None:
        training, state = _resume_state(ckpt, source)
        saved = _saved_settings(training, source, chosen)
        recorded_seed = training.get("seed", 0)
        recorded_world_size = training.get("world_size", 1)  # 1: written before torchrun was supported
    else:
        if ckpt.stage == "partial":
            raise ConfigError(f"'{source}' is the partial checkpoint of an interrupted run; continue it with: "
                              f"force train --resume {source}")
        training, state, recorded_world_size = {}, None, None
        held = holdout.pruned_fraction(ckpt.metadata)
        saved = {"val_fraction": held} if held is not None else {}
        recorded_seed = ckpt.metadata.get("seed")
    run_seed = seed if seed is not None else (recorded_seed if isinstance(recorded_seed, int) else 0)
    if seed is None:
        check_seed(run_seed, f"'{source}'", "pass --seed N to choose one")
    check_int_bounds("seed", run_seed)
    output = Path(output) if output is not None else trained_output(source)
    partial = partial_path(output)
    for path, what in ((output, "output"), (partial, "partial checkpoint")):
        if same_file(path, source) and not (resume is not None and what == "partial checkpoint"):
            raise ConfigError(f"the {what} '{path}' would overwrite the input checkpoint; choose another -o path")
    return TrainPlan(ckpt=ckpt, source=source, output=output, partial=partial,
                     settings=TrainSettings(**(saved | chosen)), seed=run_seed,
                     origin=str(training.get("source", source)), state=state,
                     recorded_world_size=recorded_world_size)


def train_checkpoint(
    checkpoint: str | Path | None = None,
    output: str | Path | None = None,
    settings: TrainSettings | Mapping[str, Any] | None = None,
    *,
    resume: str | Path | None = None,
    seed: int | None = None,
    data_dir: str | None = None,
    download: bool = True,
    device: str = "auto",
    overwrite: bool = False,
    log: str | Path | None = None,
    callbacks: TrainCallbacks | None = None,
    stop: StopFlag | None = None,
    catch_signals: bool = True,
    compact: bool = False,
) -> TrainResult:
    """Train the sparse network of ``checkpoint`` (or continue the partial checkpoint ``resume``)
    and write a trained checkpoint (stage ``trained``, the settings and the per-epoch history in
    its metadata); return where it is and what it reached.

    ``settings``: the training settings chosen (None fields: the dataset's defaults,
    ``DatasetSpec.train`` in ``data/catalog.py``); on resume only the ones given override the saved run's.
    ``seed`` defaults to the checkpoint's (pruning) seed. ``data_dir`` defaults to the folder the
    checkpoint was made with, if it exists here. With ``catch_signals`` Ctrl-C and SIGTERM save a
    partial checkpoint and raise ``TrainingInterrupted``; so does setting ``stop``.
    Raises ForceError for bad input (before any training), ``TrainingDiverged`` when the loss
    becomes NaN or infinite (the last good partial checkpoint is kept).
    """
    plan = plan_run(checkpoint, output, settings, resume, seed)
    output, partial, source = plan.output, plan.partial, plan.source
    check_new_output(output, overwrite)
    check_launch(plan.settings, device, plan.recorded_world_size, source)
    log_path = check_log(log, {"input checkpoint": source, "output": output, "partial checkpoint": partial})
    # Under torchrun every rank trains, rank 0 alone locks and writes the files (the others wait for it).
    with distributed.session(device) as device:
        main = distributed.is_main()
        with hold((output, "output"), (partial, "partial checkpoint")) if main else contextlib.nullcontext():
            check_new_output(output, overwrite)  # again: another command may have written it meanwhile
            if partial.exists() and not overwrite and not same_file(partial, source):
                raise ConfigError(f"a partial checkpoint of an earlier run exists at '{partial}'; continue it with: "
                                  f"force train --resume {partial}  (or pass --overwrite to start over)")
            if main:
                remove_stale(output)
                remove_stale(partial)
            distributed.barrier()
            options = _RunOptions(data_dir=data_dir, download=download, device=device,
                                  log=log_path if main else None, compact=compact)
            return _train(plan, options, callbacks, stop, catch_signals)


@dataclass(frozen=True)
class _RunOptions:
    """Where a planned run reads its data, runs, logs and how it writes its result."""

    data_dir: str | None
    download: bool
    device: str
    log: Path | None  # the epoch log (rank 0 only)
    compact: bool


def check_launch(settings: TrainSettings, device: str, recorded_world_size, source: Path) -> None:
    """Before any process group starts: a partial resumes only under the world size that wrote it
    (``recorded_world_size``; None: not resuming), and ``--sync-bn`` under torchrun needs CUDA."""
    if recorded_world_size is not None:
        ddp.check_world_size(recorded_world_size, source)
    launch = distributed.launch_from_env()
    if settings.sync_bn and launch is not None:
        ddp.check_sync_bn("cuda" if distributed.device_for(launch, device).startswith("cuda") else "cpu")


def check_log(log: str | Path | None, protected: dict[str, Path]) -> Path | None:
    """The ``--log-file`` path, refused when it could damage a checkpoint: it must be none of the run's
    files, nor look like a checkpoint, nor be an existing file that is not a force training log."""
    if log is None:
        return None
    log = Path(log)
    if str(log) in ("", ".") or log.name in ("", ".", ".."):
        raise ConfigError(f"--log-file '{log}' is not a file name; give one such as train.jsonl")
    for what, path in protected.items():
        if os.path.abspath(log) == os.path.abspath(path) or (log.exists() and path.exists() and log.samefile(path)):
            raise ConfigError(f"--log-file '{log}' is the {what}; give a separate file such as train.jsonl")
    if log.name.endswith(SUFFIX):
        raise ConfigError(f"--log-file '{log}' has a checkpoint's name; the log is JSON lines, give a path such as train.jsonl")
    if not log.parent.is_dir():
        raise ConfigError(f"cannot write the log '{log}': its folder does not exist; create it or choose another --log-file path")
    if log.is_dir():
        raise ConfigError(f"--log-file '{log}' is a folder; give a file name such as {log / 'train.jsonl'}")
    epoch_log.check_appendable(log)
    return log


class _Log:
    """The epoch log: one JSON line per epoch. A write error stops the run cleanly (``error``)."""

    def __init__(self, path: Path, stop: StopFlag):
        self.path, self.stop, self.error = path, stop, None
        self.file = epoch_log.open_for_append(path)

    def write(self, text: str) -> None:
        if self.error is None:
            try:
                self.file.write(text)
            except OSError as exc:
                self._failed(exc)

    def flush(self) -> None:
        if self.error is None:
            try:
                self.file.flush()
            except OSError as exc:
                self._failed(exc)

    def _failed(self, exc: OSError) -> None:
        self.error = OutputError.from_os(exc, self.path, "log")
        self.stop.set("log write failed")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()


def _train(plan: TrainPlan, options: _RunOptions, callbacks: TrainCallbacks | None, stop: StopFlag | None,
           catch_signals: bool) -> TrainResult:
    """The run itself, with the outputs locked (see ``train_checkpoint``)."""
    ckpt, source, output, partial, state, run_seed = (plan.ckpt, plan.source, plan.output, plan.partial, plan.state,
                                                      plan.seed)
    metadata = ckpt.metadata
    dev = resolve_device(options.device)
    name = metadata["dataset"]
    data_dir = options.data_dir if options.data_dir is not None else recorded_data_dir(metadata)
    info = dataset_info(name, data_dir)
    check_dataset_fits(info, metadata)
    run = complete_settings(plan.settings, info.name)
    model = model_from_checkpoint(ckpt, "cpu")
    splits = load_datasets(info.name, data_dir, download=options.download, val_fraction=run.val_fraction,
                           seed=run_seed, augment=run.augment)
    trainer = Trainer(model, ckpt.masks, splits, run, seed=run_seed, device=dev)
    if state is not None:
        trainer.load_state(state, ckpt.extra, metadata.get("history") or [])
        if trainer.epoch >= run.epochs:
            raise ConfigError(f"'{source}' has already completed {trainer.epoch} epochs; pass --epochs "
                              f"above {trainer.epoch} to train further")

    amp = trainer.amp_dtype  # what the trainer runs under, recorded as such
    carried = {k: v for k, v in metadata.items() if k not in _RUN_FIELDS}
    warnings = list(ckpt.warnings)
    if state is None:
        warnings += holdout.mismatch(metadata, run.val_fraction, run_seed)
    for warning in warnings:
        if callbacks is not None and callbacks.on_warning is not None:
            callbacks.on_warning(warning)
    if ckpt.warnings and ckpt.masks:  # masks altered after pruning: record what they really keep
        carried["achieved_sparsity"] = recomputed_sparsity(ckpt.masks)

    def training_metadata(epochs_done: int) -> dict:
        return asdict(run) | {
            "seed": run_seed, "device": str(dev), "amp_dtype": str(amp).removeprefix("torch.") if amp else None,
            "data_dir": data_dir, "source": plan.origin, "epochs_completed": epochs_done,
            "world_size": distributed.world_size(),
            "seconds": round(sum(r["seconds"] for r in trainer.history), 3),
        }

    last_good: list[tuple[Path, int]] = [(source, trainer.epoch)] if state is not None else []

    def save_partial(t: Trainer) -> None:
        structure, tensors = t.state()  # on every rank: it gathers the ranks' RNG states
        if distributed.is_main():
            meta = carried | provenance() | {
                "stage": "partial",
                "training": training_metadata(t.epoch) | {"resume": structure},
                "history": t.history,
            }
            save_checkpoint(partial, t.model.state_dict(), ckpt.masks, meta, extra=tensors)
        distributed.barrier()
        last_good.append((partial, t.epoch))

    stop = stop or StopFlag()
    log_file = _Log(options.log, stop) if options.log is not None else None
    # The signal handlers stay in place until the trained checkpoint is written: a SIGTERM between
    # the last epoch and the final save only sets the flag, and the result is still saved.
    with stop_on_signals(stop) if catch_signals else contextlib.nullcontext():
        try:
            history = trainer.run(stop=stop, save=save_partial, log=log_file, callbacks=callbacks)
        except Interrupted as exc:
            where = (f"in epoch {exc.epoch + 1} (after {exc.batch} of {exc.batches} batches)" if exc.batch
                     else f"after epoch {exc.epoch}")
            if log_file is not None and log_file.error is not None:
                raise OutputError(f"{log_file.error}; progress saved to {partial}; continue with: "
                                  f"force train --resume {partial} --log-file OTHER.jsonl") from None
            raise TrainingInterrupted(
                f"interrupted ({exc.reason}) {where}; progress saved to {partial}; continue with: "
                f"force train --resume {partial}", partial, exc.reason, announce=distributed.is_main()) from None
        except TrainingDiverged as exc:
            lower = f"{run.lr / 10:g}"
            if last_good:
                path, epoch = last_good[-1]
                hint = (f"the last good state (after epoch {epoch}) is kept in {path}; continue it with a lower "
                        f"learning rate: force train --resume {path} --lr {lower}")
            else:
                hint = f"no checkpoint was written; retry with a lower learning rate, e.g. --lr {lower}"
            raise TrainingDiverged(f"training diverged: {exc}; {hint}") from None
        finally:
            if log_file is not None:
                log_file.close()

        last = history[-1]
        metrics = {k: v for k, v in last.items() if k not in ("lr", "seconds", "train_seconds", "eval_seconds")}
        meta = carried | provenance() | {
            "stage": "trained",
            "training": training_metadata(trainer.epoch),
            "history": history,
            "metrics": metrics,
        }
        if distributed.is_main():
            _save_final(output, trainer.model.state_dict(), ckpt.masks, meta, options.compact)
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
        distributed.barrier()
    if log_file is not None and log_file.error is not None:
        raise OutputError(f"{log_file.error}; the trained checkpoint was written to {output} all the same")
    if stop.is_set:
        raise TrainingInterrupted(f"interrupted ({stop.reason}) after the last epoch; the trained checkpoint was "
                                  f"written completely to {output}", output, stop.reason, announce=distributed.is_main())
    return TrainResult(path=output, history=history, metrics=metrics, settings=run, seed=run_seed)


def _save_final(output: Path, state_dict, masks, meta, compact: bool = False) -> None:
    """Write the trained checkpoint (``compact``: its compact variant); if that fails, keep the
    finished result elsewhere and say where."""
    try:
        save_checkpoint(output, state_dict, masks, meta, compact=compact)
    except OutputError as exc:
        try:
            rescue = Path(tempfile.mkdtemp(prefix="force-rescue-")) / output.name
            save_checkpoint(rescue, state_dict, masks, meta)
        except (OSError, OutputError) as again:
            raise OutputError(f"{exc}; the finished training could not be saved elsewhere either ({again})") from None
        raise OutputError(f"{exc}; the finished training was saved to {rescue} instead; move it where you want it") from None
