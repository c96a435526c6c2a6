"""Training a sparse network with its masks enforced, resumably and reproducibly.

Mask enforcement (the one mechanism force-cli uses, in ``MaskEnforcer``):
  1. the pruned weights are zeroed once, before the first step;
  2. after every ``backward()`` the gradients are multiplied by the masks, so momentum buffers and
     Adam's moments of a pruned weight stay exactly zero;
  3. after every ``optimizer.step()`` the weights are multiplied by the masks again, which undoes
     anything an optimizer could still do to a pruned weight (weight decay, a stale buffer, ...).
A pruned weight is therefore exactly 0 after every step, whatever the optimizer.

Reproducibility: the run starts from ``torch.manual_seed(seed)``; the shuffle of epoch ``e`` comes
from a generator seeded by ``(seed, e)`` alone, so resuming needs no loader state; the learning
rate is a pure function of the epoch (``lr_at``). A ``Trainer``'s state (``state()``) holds the
epoch, the batch reached inside it, the epoch's running sums, the optimizer state as tensors plus
JSON, and torch's RNG state, so a run stopped anywhere between two steps and resumed ends with the
same weights, bit for bit (on the same device, with the same number of threads).

Stopping: ``StopFlag`` is checked after every step; ``stop_on_signals`` sets it on Ctrl-C or
SIGTERM (a second Ctrl-C aborts at once). A NaN or infinite loss raises ``TrainingDiverged``.

Under torchrun (see ``ddp``) the ranks agree on the step to stop after, the partial holds every
rank's RNG state and the running totals summed over the ranks, so it resumes exactly too. A
non-finite loss on any rank makes every rank raise ``TrainingDiverged`` after the same step.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from force_cli import distributed
from force_cli.config import TrainSettings
from force_cli.data import DataSplits
from force_cli.data.arrays import to_device
from force_cli.data.loaders import tensor_batches
from force_cli.errors import CheckpointError, DataError, NonFiniteLoss, TrainingDiverged
from force_cli.evaluation import EvalMetrics, evaluate
from force_cli.training import compiled, ddp
from force_cli.training.masking import MaskEnforcer
from force_cli.training.order import _loader, epoch_batches, epoch_seed, shard_size
from force_cli.training.settings import OPTIMIZERS, lr_at
from force_cli.training.state import (EpochTotals, StopFlag, check_progress, check_rng_state, checked_optimizer_state,
                                      corrupt, optimizer_state_to_tensors)


# --------------------------------------------------------------------------------------------
# One epoch of training
# --------------------------------------------------------------------------------------------


def autocast_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp``: bfloat16 where the GPU has it, else float16; None on CPU."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def sync_interval(device: torch.device) -> int:
    """Steps between read-backs of the running sums: every step on the CPU, where a read-back costs
    nothing; every 25 on an accelerator, where each one stalls the host until the device is idle."""
    return 1 if device.type == "cpu" else 25


def _synchronize(device: torch.device) -> None:
    """Wait for the device (CUDA runs asynchronously): called at epoch boundaries only, for timing."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _cudnn_autotune(enabled: bool):
    """cuDNN's benchmark mode (it times the convolution algorithms once per shape and keeps the
    fastest) for the speed options on CUDA; the global flag is restored afterwards."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_epoch(
    model: nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    enforcer: MaskEnforcer | None,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    totals: EpochTotals | None = None,
    sync_every: int = 1,
    on_batch: Callable[[EpochTotals], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EpochTotals:
    """Train on ``batches`` (an iterable of (x, y)), masks enforced after every step.

    Returns the epoch's totals (continuing ``totals`` when given) when the batches run out or, asked
    after every step (under DDP by every rank alike), when ``should_stop()`` is true. Every ``sync_every`` steps (and at the end) the
    running sums are read back, ``on_batch(totals)`` is called and a NaN or infinite loss raises
    ``NonFiniteLoss``; under torchrun on every rank at that same step, whichever rank's loss it was.
    """
    totals = replace(totals) if totals is not None else EpochTotals()
    model.train()
    # Running sums stay on the device between syncs; they continue the given totals exactly.
    loss_sum = torch.tensor(totals.loss_sum, dtype=torch.float64, device=device)
    correct = torch.tensor(totals.correct, dtype=torch.int64, device=device)

    def sync() -> None:
        value = float(loss_sum)
        if distributed.active():
            # every rank syncs after the same steps: agreeing here stops all of them at once when
            # one rank's loss is not finite, instead of leaving the others waiting for it
            agreed = torch.tensor([value], dtype=torch.float64)
            distributed.all_reduce_sum_([agreed])
            if not math.isfinite(float(agreed)):
                raise NonFiniteLoss(value if not math.isfinite(value) else float(agreed))
        if not math.isfinite(value):
            raise NonFiniteLoss(value)
        totals.loss_sum, totals.correct = value, int(correct)

    iterator = iter(batches)
    while True:
        try:
            x, y = next(iterator)
        except StopIteration:
            break
        except Exception:
            # a signal also reached the loader's workers: a lone process stops here; a DDP rank
            # cannot finish its share of the step the others are in, so it raises
            if should_stop is not None and not isinstance(model, DistributedDataParallel) and should_stop():
                break
            raise
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp_dtype):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        if enforcer is not None:
            enforcer.mask_grads_()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if enforcer is not None:
            enforcer.apply_()
        with torch.no_grad():  # two in-place adds on the device; float64 sum, loss * batch exact in it
            loss_sum.add_(loss.detach(), alpha=y.shape[0])
            correct.add_((logits.argmax(1) == y).sum())
        totals.seen += y.shape[0]
        totals.batches += 1
        if totals.batches % sync_every == 0:
            sync()
            if on_batch is not None:
                on_batch(totals)
        if should_stop is not None and should_stop():
            break
    sync()
    return totals


# --------------------------------------------------------------------------------------------
# The trainer: epochs, evaluation, logging, state for partial checkpoints
# --------------------------------------------------------------------------------------------

#: ``seconds`` is the whole epoch; ``train_seconds`` its training steps, ``eval_seconds`` the
#: validation and test passes (on CUDA timed with a synchronisation at these boundaries only).
EPOCH_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "seconds",
                "train_seconds", "eval_seconds")


@dataclass
class TrainCallbacks:
    """Optional hooks for progress display and tests. ``on_batch(epoch, batches, totals)`` is called
    every few steps (every step on CPU)."""

    on_start: Callable[[int, int, int], None] | None = None  # (first epoch, last epoch, batches per epoch)
    on_batch: Callable[[int, int, EpochTotals], None] | None = None
    on_epoch: Callable[[dict], None] | None = None  # the epoch's record (EPOCH_FIELDS)
    on_save: Callable[[int, int], None] | None = None  # (epoch, batches done in it) after a partial save
    on_warning: Callable[[str], None] | None = None  # something odd but usable about the input, one line


class Interrupted(Exception):
    """Raised by ``Trainer.run`` after it stopped at a ``StopFlag`` and saved its state."""

    def __init__(self, reason: str, epoch: int, batch: int, batches: int):
        super().__init__(reason)
        self.reason, self.epoch, self.batch, self.batches = reason, epoch, batch, batches


class Trainer:
    """Trains ``model`` on ``splits`` with ``masks`` enforced, epoch by epoch.

    ``settings`` must be complete (``complete_settings``). ``save(trainer)`` is called to write a
    partial checkpoint: every ``settings.save_every`` epochs and when stopped; ``log`` (a text file)
    receives one JSON line per epoch. With ``settings.compile`` the steps and the evaluation go
    through ``compiled.CompiledModel`` (``self.compiled``); ``self.model`` stays the plain model,
    whose ``state_dict`` is saved.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor], splits: DataSplits,
                 settings: TrainSettings, *, seed: int, device: torch.device,
                 eval_batch_size: int | None = None):
        if len(splits.train) == 0:
            raise DataError("the training set is empty; check the dataset folder")
        self.settings, self.seed, self.device, self.splits = settings, seed, device, splits
        # In-memory sets move to the training device once and are batched there (the training set
        # augmented batch by batch); with loader workers they stay on the CPU, where workers read them.
        moved: dict = {}  # the training and validation parts share their images: one copy on the device
        on_device = (lambda data: to_device(data, device, moved)) if settings.workers == 0 else (lambda data: data)
        self.train_data = on_device(splits.train)
        self.eval_data = {"val": on_device(splits.val) if splits.val is not None else None,
                          "test": on_device(splits.test) if splits.test is not None else None}
        memory_format = torch.channels_last if settings.channels_last else torch.preserve_format
        self.model = model.to(device=device, memory_format=memory_format)
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.eval_batch_size = eval_batch_size or settings.batch_size
        # --compile: the steps and evaluation go through a CompiledModel around the model (None
        # where torch.compile cannot run here; run() then warns and trains eagerly).
        self.compiled: compiled.CompiledModel | None = None
        self.compile_unavailable: str | None = None

        def compile_model(m: nn.Module) -> nn.Module:
            self.compiled, self.compile_unavailable = compiled.compile_model(
                m, device, train_batch=settings.batch_size, eval_batch=self.eval_batch_size,
                trial=not distributed.active())
            return self.compiled or m

        # Under torchrun the steps go through DDP (gradients averaged over ranks during backward,
        # masked after it as in a plain run); evaluation and state_dict use the model without DDP.
        self.model, self.stepper = ddp.prepare(self.model, device, sync_bn=settings.sync_bn,
                                               wrap=compile_model if settings.compile else None)
        self.forward = self.compiled or self.model  # what evaluation calls
        self.enforcer = MaskEnforcer(self.model, masks)
        self.enforcer.apply_()
        self.optimizer = OPTIMIZERS[settings.optimizer][0](self.model.parameters(), settings)
        self.amp_dtype = autocast_dtype(settings.amp, device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.batches_per_epoch = math.ceil(shard_size(len(splits.train), self.world_size) / settings.batch_size)
        self.epoch = 0  # epochs completed
        self.totals = EpochTotals()  # of the epoch in progress (batches > 0 only when stopped inside it)
        self.epoch_seconds = 0.0  # time already spent in the epoch in progress
        self.history: list[dict] = []
        self.rng_state: Tensor | None = None  # CPU RNG state to start from; None: seed it
        self.cuda_rng_state: Tensor | None = None

    # -- state for partial checkpoints ------------------------------------------------------

    def state(self) -> tuple[dict, dict[str, Tensor]]:
        """(JSON structure, tensors) of everything needed to continue exactly where it stands.
        Under torchrun every rank calls it (it gathers the ranks' RNG states and sums their totals)."""
        structure, tensors = optimizer_state_to_tensors(self.optimizer)
        tensors |= ddp.rng_states(self.device)
        return {
            "epoch": self.epoch,
            "batch": self.totals.batches,
            "totals": asdict(_summed_over_ranks(self.totals)),
            "epoch_seconds": self.epoch_seconds,
            "optimizer": structure,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "lr_schedule": {"kind": self.settings.lr_schedule, "epoch": self.epoch,
                            "lr": lr_at(self.settings, min(self.epoch, self.settings.epochs - 1))},
        }, tensors

    def load_state(self, structure: Mapping, tensors: Mapping[str, Tensor], history: list[dict]) -> None:
        """Continue from a ``state()``, every field checked first (``training.state``); the
        optimizer's hyper-parameters are the current settings'."""
        progress = check_progress(structure, history, epochs=self.settings.epochs,
                                  batches_per_epoch=self.batches_per_epoch)
        sd = checked_optimizer_state(structure, tensors, self.optimizer, list(self.model.parameters()))
        try:
            self.optimizer.load_state_dict(sd)
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise CheckpointError(f"cannot restore the optimizer state ({str(exc).splitlines()[0]}); "
                                  "the partial checkpoint was made with another optimizer") from None
        for group in self.optimizer.param_groups:  # settings given on resume win
            group["weight_decay"] = self.settings.weight_decay
            if "momentum" in group:
                group["momentum"] = self.settings.momentum
        scaler = structure.get("scaler")
        if self.scaler is not None and scaler:
            if not isinstance(scaler, dict):
                raise corrupt("gradient-scaler state is malformed")
            self.scaler.load_state_dict(scaler)
        rng = ddp.own_rng_state(tensors.get("rng.cpu"))
        cuda_rng = ddp.own_rng_state(tensors.get("rng.cuda")) if self.device.type == "cuda" else None
        check_rng_state(rng, cuda_rng, self.world_size)
        self.epoch = progress.epoch
        # the saved totals are summed over the ranks: rank 0 carries them, the others start afresh
        self.totals = progress.totals if self.rank == 0 else EpochTotals(batches=progress.totals.batches)
        self.epoch_seconds = progress.epoch_seconds
        self.rng_state = rng
        self.cuda_rng_state = cuda_rng
        self.history = progress.history

    # -- running --------------------------------------------------------------------------

    def _evaluate(self, split: str, epoch: int) -> EvalMetrics | None:
        """Loss and accuracy on the val or test split, read back once at its end. An in-memory split
        is batched on the training device without a loader; another goes through a loader with its
        own seeded generator (and fresh workers). Evaluating never moves torch's global RNG, so a
        resumed run matches."""
        dataset = self.eval_data[split]
        if dataset is None or len(dataset) == 0:
            return None
        # in memory: the same batches as a DataLoader's, made on the device without one
        loader = tensor_batches(dataset, range(len(dataset)), self.eval_batch_size)
        if loader is None:
            loader = _loader(dataset, self.eval_batch_size, workers=self.settings.workers, device=self.device,
                             generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch)))
        return evaluate(self.forward, loader, self.device, amp_dtype=self.amp_dtype,
                        channels_last=self.settings.channels_last)

    def run(self, *, stop: StopFlag | None = None, save: Callable[[Trainer], None] | None = None,
            log: Any = None, callbacks: TrainCallbacks | None = None) -> list[dict]:
        """Train up to ``settings.epochs``; return the history (one record per epoch).

        Raises ``Interrupted`` (after ``save``) when ``stop`` is set, ``TrainingDiverged`` when the
        loss or an evaluation loss is NaN or infinite (nothing is saved for that epoch).
        """
        s, cb = self.settings, callbacks or TrainCallbacks()
        stop = stop or StopFlag()
        sync_every = sync_interval(self.device)
        agreement = ddp.StopAgreement(stop, every=sync_every)
        cuda = [self.device] if self.device.type == "cuda" else []
        if self.compile_unavailable is not None and cb.on_warning:
            cb.on_warning(f"--compile: {self.compile_unavailable}; training without it")
            self.compile_unavailable = None
        if self.compiled is not None:  # the compile failure, if any, is reported as it happens
            self.compiled.on_warning = cb.on_warning
        if cb.on_start:
            cb.on_start(self.epoch + 1, s.epochs, self.batches_per_epoch)
        speed_options = s.compile or s.amp or s.channels_last
        with torch.random.fork_rng(devices=cuda), _cudnn_autotune(bool(cuda) and speed_options):
            if self.rng_state is None:
                torch.manual_seed(ddp.rank_seed(self.seed, self.rank))
            else:
                torch.set_rng_state(self.rng_state)
                if cuda and self.cuda_rng_state is not None:
                    torch.cuda.set_rng_state(self.cuda_rng_state.to(torch.uint8), self.device)
            while self.epoch < s.epochs:
                epoch = self.epoch + 1
                lr = lr_at(s, epoch - 1)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                _synchronize(self.device)
                started = time.perf_counter()
                batches = epoch_batches(self.train_data, s.batch_size, self.seed, epoch,
                                        skip=self.totals.batches, workers=s.workers, device=self.device,
                                        rank=self.rank, world_size=self.world_size)
                on_batch = (lambda t: cb.on_batch(epoch, self.batches_per_epoch, t)) if cb.on_batch else None
                try:
                    totals = train_epoch(
                        self.stepper, batches, self.optimizer, self.enforcer, device=self.device,
                        amp_dtype=self.amp_dtype, scaler=self.scaler, channels_last=s.channels_last,
                        totals=self.totals, sync_every=sync_every, on_batch=on_batch,
                        should_stop=agreement.after_step,
                    )
                except NonFiniteLoss as exc:
                    raise TrainingDiverged(f"the training loss became {exc.value} in epoch {epoch} (lr {lr:g})") from None
                finally:
                    del batches  # shut down this epoch's loader workers
                _synchronize(self.device)
                train_seconds = self.epoch_seconds + time.perf_counter() - started
                if totals.batches < self.batches_per_epoch:  # stopped inside the epoch
                    self.totals = totals
                    self.epoch_seconds = train_seconds
                    self._stop(stop, save, cb)
                totals = _summed_over_ranks(totals)
                eval_started = time.perf_counter()
                val, test = self._evaluate("val", epoch), self._evaluate("test", epoch)
                _synchronize(self.device)
                eval_seconds = time.perf_counter() - eval_started
                for name, metrics in (("validation", val), ("test", test)):
                    if metrics is not None and not math.isfinite(metrics.loss):
                        raise TrainingDiverged(f"the {name} loss became {metrics.loss} after epoch {epoch} (lr {lr:g})")
                record = {
                    "epoch": epoch, "lr": lr, "train_loss": totals.loss, "train_acc": totals.acc,
                    "val_loss": val.loss if val else None, "val_acc": val.top1 if val else None,
                    "test_loss": test.loss, "test_acc": test.top1,
                    "seconds": round(self.epoch_seconds + time.perf_counter() - started, 4),
                    "train_seconds": round(train_seconds, 4), "eval_seconds": round(eval_seconds, 4),
                }
                self.epoch, self.totals, self.epoch_seconds = epoch, EpochTotals(), 0.0
                self.history.append(record)
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                if cb.on_epoch:
                    cb.on_epoch(record)
                if agreement.now() and self.epoch < s.epochs:
                    self._stop(stop, save, cb)
                if save is not None and s.save_every and epoch % s.save_every == 0 and epoch < s.epochs:
                    save(self)
                    if cb.on_save:
                        cb.on_save(self.epoch, 0)
        return self.history

    def _stop(self, stop: StopFlag, save, cb: TrainCallbacks) -> None:
        if save is not None:
            save(self)
            if cb.on_save:
                cb.on_save(self.epoch, self.totals.batches)
        raise Interrupted(stop.reason or "stopped", self.epoch, self.totals.batches, self.batches_per_epoch)


def _summed_over_ranks(totals: EpochTotals) -> EpochTotals:
    """An epoch's totals over all ranks (each rank's own under a plain run), for its record."""
    if not distributed.active():
        return totals
    sums = torch.tensor([totals.loss_sum, totals.correct, totals.seen], dtype=torch.float64)
    distributed.all_reduce_sum_([sums])
    return replace(totals, loss_sum=float(sums[0]), correct=int(sums[1]), seen=int(sums[2]))
