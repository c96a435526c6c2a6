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
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from force_cli import distributed
from force_cli.config import TrainSettings, check_int_bounds
from force_cli.data import DataSplits
from force_cli.errors import CheckpointError, ConfigError, DataError, UnknownNameError
from force_cli.evaluation import EvalMetrics, evaluate
from force_cli.pruning.masks import prunable_weights

# --------------------------------------------------------------------------------------------
# Defaults per dataset
# --------------------------------------------------------------------------------------------

#: The paper's code for CIFAR (naver/force, experiments.py): SGD, lr 0.1, momentum 0.9, weight
#: decay 5e-4, batch 128, 350 epochs, lr x0.1 after epochs 150 and 250, 10% held out for validation.
_PAPER_CIFAR = dict(epochs=350, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                    lr_schedule="multistep", milestones=[150, 250], gamma=0.1, batch_size=128,
                    val_fraction=0.1)

#: Training defaults by dataset; a flag or the recipe's ``train:`` section overrides each one.
TRAIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar10": _PAPER_CIFAR,
    "cifar100": _PAPER_CIFAR,
    "svhn": _PAPER_CIFAR,
    # The paper's code for Tiny-ImageNet: 300 epochs, x0.1 after 150 and 225, no validation split.
    "tiny-imagenet": _PAPER_CIFAR | dict(epochs=300, milestones=[150, 225], val_fraction=0.0),
    # The paper's ImageNet script (PyTorch's example): 90 epochs, batch 256, wd 1e-4, x0.1 every 30.
    "imagenet": _PAPER_CIFAR | dict(epochs=90, milestones=[30, 60], weight_decay=1e-4, batch_size=256,
                                    val_fraction=0.0),
    "imagefolder": _PAPER_CIFAR | dict(epochs=90, milestones=[30, 60], weight_decay=1e-4, batch_size=256,
                                       val_fraction=0.0),
    # MNIST-like (not in the paper): the same optimizer, 40 epochs, x0.1 after 20 and 30.
    "mnist": _PAPER_CIFAR | dict(epochs=40, milestones=[20, 30]),
    "fashion-mnist": _PAPER_CIFAR | dict(epochs=40, milestones=[20, 30]),
    # digits (1293 training images of 8x8 after the 10% validation split): 100 epochs of 41
    # batches of 32, x0.1 after 50 and 75; a 99%-sparse LeNet-300-100 trains in about 4 s on a CPU.
    "digits": _PAPER_CIFAR | dict(epochs=100, batch_size=32, milestones=[50, 75]),
    # synthetic (smoke tests, benchmarks): 10 epochs, x0.1 after 5 and 8.
    "synthetic": _PAPER_CIFAR | dict(epochs=10, milestones=[5, 8]),
}

#: Default learning rate when ``--optimizer adam`` is chosen without ``--lr``.
ADAM_DEFAULT_LR = 1e-3


def _build_sgd(params, s: TrainSettings) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


def _build_adam(params, s: TrainSettings) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)


#: Optimizer registry: name -> (builder, one line for --help).
OPTIMIZERS: dict[str, tuple[Callable, str]] = {
    "sgd": (_build_sgd, "SGD with momentum and L2 weight decay (the paper's)"),
    "adam": (_build_adam, f"Adam with L2 weight decay (lr {ADAM_DEFAULT_LR:g} unless --lr)"),
}


def _multistep(s: TrainSettings, index: int) -> float:
    return s.lr * s.gamma ** sum(1 for m in s.milestones if m <= index)


def _cosine(s: TrainSettings, index: int) -> float:
    return s.lr * 0.5 * (1.0 + math.cos(math.pi * index / s.epochs))


#: Learning-rate schedules: name -> (lr of 0-based epoch index, one line for --help). Each is a
#: pure function of the epoch (torch's MultiStepLR / CosineAnnealingLR in closed form), so a
#: resumed run needs no scheduler object, only the epoch.
LR_SCHEDULES: dict[str, tuple[Callable[[TrainSettings, int], float], str]] = {
    "multistep": (_multistep, "lr x gamma after each milestone epoch"),
    "cosine": (_cosine, "cosine annealing from lr to 0 over the run"),
}


def lr_at(settings: TrainSettings, index: int) -> float:
    """The learning rate of the epoch with 0-based ``index``."""
    return LR_SCHEDULES[settings.lr_schedule][0](settings, index)


def complete_settings(settings: TrainSettings, dataset: str) -> TrainSettings:
    """``settings`` with every ``None`` replaced by ``dataset``'s default, validated."""
    defaults = dict(TRAIN_DEFAULTS.get(dataset, _PAPER_CIFAR))
    if settings.optimizer == "adam":
        defaults["lr"] = ADAM_DEFAULT_LR
    values = {f.name: getattr(settings, f.name) for f in fields(settings)}
    for name, value in values.items():
        if value is None:
            values[name] = defaults[name]
    values["milestones"] = [int(m) for m in values["milestones"]]
    done = TrainSettings(**values)
    validate_settings(done)
    return done


def validate_settings(s: TrainSettings) -> None:
    """Refuse settings outside their valid range with a message naming the flag."""
    if s.optimizer not in OPTIMIZERS:
        raise UnknownNameError("optimizer", s.optimizer, OPTIMIZERS)
    if s.lr_schedule not in LR_SCHEDULES:
        raise UnknownNameError("lr schedule", s.lr_schedule, LR_SCHEDULES)
    checks = [
        ("epochs", s.epochs >= 1, "at least 1"),
        ("lr", s.lr > 0 and math.isfinite(s.lr), "a positive number"),
        ("momentum", 0 <= s.momentum < 1, "in [0, 1)"),
        ("weight-decay", s.weight_decay >= 0 and math.isfinite(s.weight_decay), ">= 0"),
        ("gamma", 0 < s.gamma <= 1, "in (0, 1]"),
        ("batch-size", s.batch_size >= 1, "at least 1"),
        ("val-fraction", 0 <= s.val_fraction < 1, "in [0, 1), e.g. 0.1"),
        ("workers", s.workers >= 0, ">= 0"),
        ("save-every", s.save_every >= 0, ">= 0 (0: only when interrupted)"),
    ]
    for f in fields(s):
        check_int_bounds(f.name, getattr(s, f.name))
    for flag, ok, what in checks:
        if not ok:
            raise ConfigError(f"--{flag} must be {what}, got {getattr(s, flag.replace('-', '_'))}")
    if any(m < 1 for m in s.milestones) or list(s.milestones) != sorted(set(s.milestones)):
        raise ConfigError(f"--milestones must be increasing positive epochs such as 150,250, got {s.milestones}")


# --------------------------------------------------------------------------------------------
# Mask enforcement
# --------------------------------------------------------------------------------------------


class MaskEnforcer:
    """Keeps the pruned weights of ``model`` at exactly zero (see the module docstring).

    The masks are copied once onto the weights' device, in their dtype and memory format; layers
    whose mask keeps everything are skipped. Call ``apply_()`` before training and after every
    ``optimizer.step()``, ``mask_grads_()`` after every ``backward()``.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor]):
        weights = prunable_weights(model)
        self.names: list[str] = []
        self.params: list[Tensor] = []
        self.masks: list[Tensor] = []
        for name, mask in masks.items():
            if name not in weights:
                raise CheckpointError(f"mask '{name}' matches no prunable weight of the model")
            if bool(mask.all()):
                continue
            weight = weights[name]
            self.names.append(name)
            self.params.append(weight)
            self.masks.append(torch.empty_like(weight, memory_format=torch.preserve_format,
                                               requires_grad=False).copy_(mask))

    @torch.no_grad()
    def apply_(self) -> None:
        """Zero the pruned weights."""
        if self.params:
            torch._foreach_mul_(self.params, self.masks)

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """Zero the gradients of the pruned weights."""
        pairs = [(p.grad, m) for p, m in zip(self.params, self.masks) if p.grad is not None]
        if pairs:
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])


# --------------------------------------------------------------------------------------------
# Optimizer state <-> tensors + JSON (no pickle)
# --------------------------------------------------------------------------------------------

_TENSOR_REF = "tensor"


def optimizer_state_to_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optimizer") -> tuple[dict, dict[str, Tensor]]:
    """Split ``optimizer.state_dict()`` into a JSON-able structure and named tensors."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    state: dict[str, dict] = {}
    for index, entry in sd["state"].items():
        out = {}
        for key, value in entry.items():
            if torch.is_tensor(value):
                name = f"{prefix}.{index}.{key}"
                tensors[name] = value.detach()
                out[key] = {_TENSOR_REF: name}
            else:
                out[key] = value
        state[str(index)] = out
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return {"state": state, "param_groups": groups}, tensors


def optimizer_state_from_tensors(structure: Mapping, tensors: Mapping[str, Tensor]) -> dict:
    """The inverse of ``optimizer_state_to_tensors``: a dict for ``optimizer.load_state_dict``."""
    state = {}
    for index, entry in structure["state"].items():
        out = {}
        for key, value in entry.items():
            if isinstance(value, dict) and _TENSOR_REF in value:
                if value[_TENSOR_REF] not in tensors:
                    raise CheckpointError(f"the optimizer state '{value[_TENSOR_REF]}' is missing; the partial checkpoint is corrupt")
                out[key] = tensors[value[_TENSOR_REF]]
            else:
                out[key] = value
        state[int(index)] = out
    groups = [dict(g) for g in structure["param_groups"]]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------------------------
# Stopping: a flag set by signals or callers, checked after every step
# --------------------------------------------------------------------------------------------


class StopFlag:
    """Set to ask a running ``Trainer`` to save its state and stop after the current step."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str = "stop requested") -> None:
        self.reason = reason

    @property
    def is_set(self) -> bool:
        return self.reason is not None


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[None]:
    """While inside, SIGINT (Ctrl-C) and SIGTERM set ``flag`` instead of killing the process; a
    second Ctrl-C raises KeyboardInterrupt at once. The previous handlers are restored on exit.
    Outside the main thread (where Python allows no handlers) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if flag.is_set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.set(signal.Signals(signum).name)

    # a signal this process ignores stays ignored (a sweep worker leaves Ctrl-C to its parent)
    caught = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is not signal.SIG_IGN]
    previous = {sig: signal.signal(sig, handler) for sig in caught}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class TrainingDiverged(Exception):
    """The loss became NaN or infinite. Not a ForceError: the input was fine, the run failed (exit 1)."""


class NonFiniteLoss(Exception):
    def __init__(self, value: float):
        super().__init__(f"the loss became {value}")
        self.value = value


# --------------------------------------------------------------------------------------------
# Epoch data order: a pure function of (seed, epoch)
# --------------------------------------------------------------------------------------------


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s shuffle (and of its loader workers)."""
    return (int(seed) * 1_000_003 + int(epoch)) & 0x7FFF_FFFF_FFFF_FFFF


def shard_size(n: int, world_size: int) -> int:
    """Samples each rank sees per epoch: ``ceil(n / world_size)`` (DistributedSampler's)."""
    return -(-n // world_size)


class EpochSampler(Sampler[int]):
    """A permutation of ``range(n)`` seeded by ``(seed, epoch)``, starting at position ``start``.

    Under torchrun (``world_size`` > 1) rank ``rank`` takes every ``world_size``-th index of that
    same global permutation, padded by wrapping around to a multiple of ``world_size`` as
    torch's DistributedSampler does; so step k of all ranks together covers exactly the k-th
    batch of ``world_size * batch_size`` of a single-process run (the last one up to the padding).
    """

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0, *, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.epoch, self.start = n, seed, epoch, start
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        order = torch.randperm(self.n, generator=generator)
        if self.world_size > 1:
            padded = shard_size(self.n, self.world_size) * self.world_size
            order = torch.cat([order, order[: padded - self.n]])[self.rank::self.world_size]
        return iter(order[self.start:].tolist())

    def __len__(self) -> int:
        return max(0, shard_size(self.n, self.world_size) - self.start)


def _ignore_sigint(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which saves the progress and stops them."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _loader(dataset: Dataset, batch_size: int, *, workers: int, device: torch.device | None,
            generator: torch.Generator, sampler: Sampler | None = None) -> DataLoader:
    """A loader whose worker seeds come from ``generator``, never from torch's global RNG."""
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
        pin_memory=device is not None and device.type == "cuda", generator=generator,
        worker_init_fn=_ignore_sigint if workers else None,
    )


def epoch_batches(dataset: Dataset, batch_size: int, seed: int, epoch: int, *, skip: int = 0,
                  workers: int = 0, device: torch.device | None = None, rank: int = 0,
                  world_size: int = 1) -> Iterator:
    """The batches of epoch ``epoch`` (1-based), without the first ``skip`` batches.

    Without workers the skipped samples are never loaded (their augmentation randomness is in
    the restored RNG state); with workers they are loaded and dropped, so every worker draws the
    same augmentation as in an uninterrupted epoch.
    """
    start = skip * batch_size if workers == 0 else 0
    loader = _loader(dataset, batch_size, workers=workers, device=device,
                     sampler=EpochSampler(len(dataset), seed, epoch, start, rank=rank, world_size=world_size),
                     generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
    iterator = iter(loader)
    if workers:
        for _ in range(skip):
            next(iterator)
    return iterator


# --------------------------------------------------------------------------------------------
# One epoch of training
# --------------------------------------------------------------------------------------------


@dataclass
class EpochTotals:
    """Running sums of the current epoch (kept in partial checkpoints, so a resumed epoch reports
    the same loss and accuracy as an uninterrupted one)."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    batches: int = 0

    @property
    def loss(self) -> float:
        return self.loss_sum / self.seen if self.seen else float("nan")

    @property
    def acc(self) -> float:
        return self.correct / self.seen if self.seen else float("nan")


def autocast_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp``: bfloat16 where the GPU has it, else float16; None on CPU."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


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

    Returns the epoch's totals (continuing ``totals`` when given) when the batches run out or, checked
    after every step, when ``should_stop()`` is true. Every ``sync_every`` steps (and at the end) the
    running sums are read back, ``on_batch(totals)`` is called and a NaN or infinite loss raises
    ``NonFiniteLoss``.
    """
    totals = replace(totals) if totals is not None else EpochTotals()
    model.train()
    # Running sums stay on the device between syncs; they continue the given totals exactly.
    loss_sum = torch.tensor(totals.loss_sum, dtype=torch.float64, device=device)
    correct = torch.tensor(totals.correct, dtype=torch.int64, device=device)

    def sync() -> None:
        value = float(loss_sum)
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
            if should_stop is not None and should_stop():  # Ctrl-C also reached the loader's workers
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
        with torch.no_grad():
            loss_sum.add_(loss.detach().double() * y.shape[0])
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

EPOCH_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "seconds")


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
    receives one JSON line per epoch.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor], splits: DataSplits,
                 settings: TrainSettings, *, seed: int, device: torch.device,
                 eval_batch_size: int | None = None):
        if len(splits.train) == 0:
            raise DataError("the training set is empty; check the dataset folder")
        self.settings, self.seed, self.device, self.splits = settings, seed, device, splits
        memory_format = torch.channels_last if settings.channels_last else torch.preserve_format
        self.model = model.to(device=device, memory_format=memory_format)
        self.enforcer = MaskEnforcer(self.model, masks)
        self.enforcer.apply_()
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        # Under torchrun the steps go through DDP (gradients averaged over ranks during backward,
        # masked after it as in a plain run); evaluation and state_dict use the bare model.
        self.stepper: nn.Module = self.model if self.world_size == 1 else DistributedDataParallel(
            self.model, device_ids=[device] if device.type == "cuda" else None)
        self.optimizer = OPTIMIZERS[settings.optimizer][0](self.model.parameters(), settings)
        self.amp_dtype = autocast_dtype(settings.amp, device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.batches_per_epoch = math.ceil(shard_size(len(splits.train), self.world_size) / settings.batch_size)
        self.eval_batch_size = eval_batch_size or settings.batch_size
        self.epoch = 0  # epochs completed
        self.totals = EpochTotals()  # of the epoch in progress (batches > 0 only when stopped inside it)
        self.epoch_seconds = 0.0  # time already spent in the epoch in progress
        self.history: list[dict] = []
        self.rng_state: Tensor | None = None  # CPU RNG state to start from; None: seed it
        self.cuda_rng_state: Tensor | None = None

    # -- state for partial checkpoints ------------------------------------------------------

    def state(self) -> tuple[dict, dict[str, Tensor]]:
        """(JSON structure, tensors) of everything needed to continue exactly where it stands."""
        structure, tensors = optimizer_state_to_tensors(self.optimizer)
        tensors["rng.cpu"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "epoch": self.epoch,
            "batch": self.totals.batches,
            "totals": asdict(self.totals),
            "epoch_seconds": self.epoch_seconds,
            "optimizer": structure,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "lr_schedule": {"kind": self.settings.lr_schedule, "epoch": self.epoch,
                            "lr": lr_at(self.settings, min(self.epoch, self.settings.epochs - 1))},
        }, tensors

    def load_state(self, structure: Mapping, tensors: Mapping[str, Tensor], history: list[dict]) -> None:
        """Continue from a ``state()``; the optimizer's hyper-parameters are the current settings'.

        A partial checkpoint is a file like any other: every field is checked (types, ranges,
        tensor shapes and dtypes) before it is used, and any mismatch is a one-line CheckpointError.
        """
        def corrupt(what: str) -> CheckpointError:
            return CheckpointError(f"the partial checkpoint's {what}; the file is corrupt, resume from an "
                                   "earlier partial checkpoint or start again from the pruned one")

        if not isinstance(structure, Mapping):
            raise corrupt("training state is not a mapping")
        epoch = structure.get("epoch")
        if not _is_int(epoch) or not 0 <= epoch <= self.settings.epochs + 100_000:
            raise corrupt(f"epoch {epoch!r} is not a non-negative integer")
        totals = structure.get("totals")
        if not isinstance(totals, Mapping) or set(totals) != {f.name for f in fields(EpochTotals)}:
            raise corrupt("running totals are malformed")
        if not all(_is_int(totals[k]) and totals[k] >= 0 for k in ("correct", "seen", "batches")) or not (
                isinstance(totals["loss_sum"], (int, float)) and not isinstance(totals["loss_sum"], bool)
                and math.isfinite(totals["loss_sum"])):
            raise corrupt("running totals are not non-negative numbers")
        if totals["batches"] >= self.batches_per_epoch or totals["correct"] > totals["seen"]:
            raise corrupt(f"batch index {totals['batches']} is outside the epoch's {self.batches_per_epoch} batches")
        seconds = structure.get("epoch_seconds", 0.0)
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
            raise corrupt("epoch time is not a number")
        if not isinstance(history, list) or not all(isinstance(r, Mapping) for r in history):
            raise corrupt("history is not a list of epoch records")
        if len(history) < epoch or any(not _is_int(r.get("epoch")) for r in history[:epoch]):
            raise corrupt(f"history has {len(history)} epoch records for {epoch} finished epochs")
        try:
            sd = optimizer_state_from_tensors(structure["optimizer"], tensors)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise corrupt(f"optimizer state is malformed ({type(exc).__name__})") from None
        params = list(self.model.parameters())
        groups = sd["param_groups"]
        current = self.optimizer.state_dict()["param_groups"]
        if len(groups) != len(current) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                  for g in groups) or \
                sorted(i for g in groups for i in g["params"]) != list(range(len(params))):
            raise corrupt("optimizer state does not fit the model")
        # The hyper-parameters are the current settings' (set again below and at every epoch);
        # only the parameter indices come from the file, so no saved value of the wrong type is used.
        sd["param_groups"] = [{k: v for k, v in mine.items() if k != "params"} | {"params": saved["params"]}
                              for mine, saved in zip(current, groups)]
        for index, entry in sd["state"].items():
            if not 0 <= index < len(params) or not isinstance(entry, dict):
                raise corrupt("optimizer state names a parameter the model does not have")
            for key, value in entry.items():
                if torch.is_tensor(value) and value.dim() > 0 and (
                        value.shape != params[index].shape or not value.dtype.is_floating_point):
                    raise corrupt(f"optimizer state '{key}' of parameter {index} has shape {tuple(value.shape)} "
                                  f"and dtype {value.dtype}, the parameter {tuple(params[index].shape)}")
                if torch.is_tensor(value) and value.dim() == 0 and value.numel() != 1:
                    raise corrupt(f"optimizer state '{key}' of parameter {index} is malformed")
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
        rng = tensors.get("rng.cpu")
        reference = torch.get_rng_state()
        if rng is None:
            raise corrupt("RNG state is missing")
        if rng.dtype != torch.uint8 or rng.shape != reference.shape:
            raise corrupt(f"RNG state is {rng.dtype} of shape {tuple(rng.shape)}, not uint8 of {tuple(reference.shape)}")
        try:  # torch checks the generator's own consistency; try it on a scratch generator
            torch.Generator().set_state(rng)
        except RuntimeError:
            raise corrupt("RNG state is invalid") from None
        cuda_rng = tensors.get("rng.cuda") if self.device.type == "cuda" else None
        if cuda_rng is not None and cuda_rng.dtype != torch.uint8:
            raise corrupt("CUDA RNG state is not uint8")
        self.epoch = epoch
        self.totals = EpochTotals(**totals)
        self.epoch_seconds = float(seconds)
        self.rng_state = rng
        self.cuda_rng_state = cuda_rng
        self.history = [dict(r) for r in history][: self.epoch]

    # -- running --------------------------------------------------------------------------

    def _evaluate(self, split: str, epoch: int) -> EvalMetrics | None:
        """Loss and accuracy on the val or test split. The loader has its own seeded generator (and
        fresh workers), so evaluating never moves torch's global RNG and a resumed run matches."""
        dataset = self.splits.val if split == "val" else self.splits.test
        if dataset is None or len(dataset) == 0:
            return None
        loader = _loader(dataset, self.eval_batch_size, workers=self.settings.workers, device=self.device,
                         generator=torch.Generator().manual_seed(epoch_seed(self.seed, epoch)))
        return evaluate(self.model, loader, self.device, amp_dtype=self.amp_dtype,
                        channels_last=self.settings.channels_last)

    def run(self, *, stop: StopFlag | None = None, save: Callable[[Trainer], None] | None = None,
            log: Any = None, callbacks: TrainCallbacks | None = None) -> list[dict]:
        """Train up to ``settings.epochs``; return the history (one record per epoch).

        Raises ``Interrupted`` (after ``save``) when ``stop`` is set, ``TrainingDiverged`` when the
        loss or an evaluation loss is NaN or infinite (nothing is saved for that epoch).
        """
        s, cb = self.settings, callbacks or TrainCallbacks()
        stop = stop or StopFlag()
        sync_every = 1 if self.device.type == "cpu" else 25
        cuda = [self.device] if self.device.type == "cuda" else []
        if cb.on_start:
            cb.on_start(self.epoch + 1, s.epochs, self.batches_per_epoch)
        with torch.random.fork_rng(devices=cuda):
            if self.rng_state is None:
                torch.manual_seed(self.seed)
            else:
                torch.set_rng_state(self.rng_state)
                if cuda and self.cuda_rng_state is not None:
                    torch.cuda.set_rng_state(self.cuda_rng_state.to(torch.uint8), self.device)
            while self.epoch < s.epochs:
                epoch = self.epoch + 1
                lr = lr_at(s, epoch - 1)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                started = time.perf_counter()
                batches = epoch_batches(self.splits.train, s.batch_size, self.seed, epoch,
                                        skip=self.totals.batches, workers=s.workers, device=self.device,
                                        rank=self.rank, world_size=self.world_size)
                on_batch = (lambda t: cb.on_batch(epoch, self.batches_per_epoch, t)) if cb.on_batch else None
                try:
                    totals = train_epoch(
                        self.stepper, batches, self.optimizer, self.enforcer, device=self.device,
                        amp_dtype=self.amp_dtype, scaler=self.scaler, channels_last=s.channels_last,
                        totals=self.totals, sync_every=sync_every, on_batch=on_batch,
                        should_stop=lambda: stop.is_set,
                    )
                except NonFiniteLoss as exc:
                    raise TrainingDiverged(f"the training loss became {exc.value} in epoch {epoch} (lr {lr:g})") from None
                finally:
                    del batches  # shut down this epoch's loader workers
                if totals.batches < self.batches_per_epoch:  # stopped inside the epoch
                    self.totals = totals
                    self.epoch_seconds += time.perf_counter() - started
                    self._stop(stop, save, cb)
                totals = _summed_over_ranks(totals)
                val, test = self._evaluate("val", epoch), self._evaluate("test", epoch)
                for name, metrics in (("validation", val), ("test", test)):
                    if metrics is not None and not math.isfinite(metrics.loss):
                        raise TrainingDiverged(f"the {name} loss became {metrics.loss} after epoch {epoch} (lr {lr:g})")
                record = {
                    "epoch": epoch, "lr": lr, "train_loss": totals.loss, "train_acc": totals.acc,
                    "val_loss": val.loss if val else None, "val_acc": val.top1 if val else None,
                    "test_loss": test.loss, "test_acc": test.top1,
                    "seconds": round(self.epoch_seconds + time.perf_counter() - started, 4),
                }
                self.epoch, self.totals, self.epoch_seconds = epoch, EpochTotals(), 0.0
                self.history.append(record)
                if log is not None:
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                if cb.on_epoch:
                    cb.on_epoch(record)
                if stop.is_set and self.epoch < s.epochs:
                    self._stop(stop, save, cb)
                if save is not None and s.save_every and epoch % s.save_every == 0 and epoch < s.epochs:
                    save(self)
                    if cb.on_save:
                        cb.on_save(self.epoch, 0)
        return self.history

    def _stop(self, stop: StopFlag, save, cb: TrainCallbacks) -> None:
        if self.world_size > 1:  # ranks may stop at different steps: no consistent partial to save yet
            raise KeyboardInterrupt
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
