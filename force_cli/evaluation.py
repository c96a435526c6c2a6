"""Evaluation: loss, top-1 and top-k accuracy of a model on a dataset split.

``evaluate`` works on any model and loader; ``evaluate_checkpoint`` is `force eval` as a library
call: checkpoint in, metrics out (the model rebuilt from the checkpoint's metadata).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from force_cli import distributed
from force_cli.checkpoint.metadata import check_seed
from force_cli.config import check_int_bounds
from force_cli.data import dataset_info, load_datasets, make_loader
from force_cli.data.holdout import checkpoint_fraction, is_fraction
from force_cli.data.names import SPLITS
from force_cli.device import resolve_device
from force_cli.errors import CheckpointError, ConfigError, DataError, IncompatibleError
from force_cli.pruning.masks import count_kept, count_total
from force_cli.restore import input_shape, load_for_model, model_from_checkpoint
from force_cli.shrink import is_shrunk, load_shrunk


@dataclass
class EvalMetrics:
    """Mean cross-entropy ``loss``, ``top1`` and ``topk`` accuracy (fractions), ``k = min(5, classes)``."""

    loss: float
    top1: float
    topk: float
    k: int
    samples: int


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, *, amp_dtype: torch.dtype | None = None,
             channels_last: bool = False, k: int = 5,
             on_batch: Callable[[int], None] | None = None,
             sum_over_ranks: Callable[[list[torch.Tensor]], None] | None = None) -> EvalMetrics:
    """Evaluate ``model`` (in eval mode; its previous mode is restored) on every batch of ``loader``.

    ``sum_over_ranks`` (under torchrun: each rank holds a shard) sums the raw totals in place
    before they are divided, so the metrics are those of the whole split.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct1 = torch.zeros((), dtype=torch.int64, device=device)
    correctk = torch.zeros((), dtype=torch.int64, device=device)
    samples, top = 0, k
    autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    try:
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = model(x)
            logits = logits.float()
            top = min(k, logits.shape[1])
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
            best = logits.topk(top, dim=1).indices
            hits = best == y[:, None]
            correct1 += hits[:, 0].sum()
            correctk += hits.any(dim=1).sum()
            samples += y.shape[0]
            if on_batch is not None:
                on_batch(samples)
    finally:
        model.train(was_training)
    if sum_over_ranks is not None:
        count = torch.tensor(samples, dtype=torch.int64, device=device)
        sum_over_ranks([loss_sum, correct1, correctk, count])
        samples = int(count)
    if samples == 0:
        return EvalMetrics(float("nan"), float("nan"), float("nan"), top, 0)
    return EvalMetrics(float(loss_sum) / samples, int(correct1) / samples, int(correctk) / samples, top, samples)


def _recorded(metadata: dict, key: str) -> Any:
    training = metadata.get("training")
    return training.get(key) if isinstance(training, dict) else None


def recorded_data_dir(metadata: dict) -> str | None:
    """The data folder the checkpoint was trained or pruned with, if it exists on this machine."""
    pruning = metadata.get("pruning") if isinstance(metadata.get("pruning"), dict) else {}
    for value in (_recorded(metadata, "data_dir"), pruning.get("data_dir")):
        if isinstance(value, str) and value and Path(value).expanduser().is_dir():
            return value
    return None


def check_dataset_fits(info, metadata: dict) -> None:
    """Refuse a dataset whose classes or image shape differ from what the checkpoint's model was built for."""
    args = metadata["model_args"]
    if info.num_classes != args.get("num_classes"):
        raise IncompatibleError(
            f"dataset '{info.name}' has {info.num_classes} classes but the checkpoint's model has "
            f"{args.get('num_classes')} outputs; use a dataset with {args.get('num_classes')} classes "
            f"(the checkpoint was made for '{metadata['dataset']}')"
        )
    shape, expected = (info.in_channels, info.image_size), (args.get("in_channels"), args.get("image_size"))
    if shape != expected:
        raise IncompatibleError(
            f"dataset '{info.name}' has {shape[0]}x{shape[1]}x{shape[1]} images but the checkpoint's model "
            f"takes {expected[0]}x{expected[1]}x{expected[1]}; use a dataset of that shape "
            f"(the checkpoint was made for '{metadata['dataset']}')"
        )


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    split: str = "test",
    dataset: str | None = None,
    data_dir: str | None = None,
    download: bool = True,
    device: str = "auto",
    batch_size: int = 256,
    workers: int = 0,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load ``checkpoint`` and evaluate it on ``split`` of its dataset (or of ``dataset``).

    The ``val`` split is the one held out during training (the checkpoint's recorded validation
    fraction and seed; for an untrained checkpoint the dataset's default fraction). Returns a
    JSON-able dict: checkpoint, model, dataset, split, samples, loss, top1, top5, top5_k (the k of
    "top-5": min(5, classes)), density, stage. ``on_start(samples)`` and ``on_batch(done)`` report progress.
    Under torchrun each rank evaluates every N-th sample and the totals are summed over the ranks.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; use one of: {', '.join(SPLITS)}")
    check_int_bounds("batch_size", batch_size)
    check_int_bounds("workers", workers)
    with distributed.session(device) as device:  # under torchrun: each rank evaluates every N-th sample
        return _evaluate_checkpoint(checkpoint, split, dataset, data_dir, download, device, batch_size, workers,
                                    on_start, on_batch, on_warning)


def _load_network(path) -> tuple[nn.Module, dict, tuple[int, int], list[str]]:
    """(model on the CPU, metadata, (kept, total) prunable weights, warnings) of a checkpoint or of
    a shrunk network (``force shrink``), whose metadata is its source checkpoint's."""
    if is_shrunk(path):
        net, metadata = load_shrunk(path)
        try:
            if not all(isinstance(metadata.get(k), str) for k in ("model", "dataset", "stage")):
                raise KeyError
            shape = input_shape(metadata)
        except (KeyError, TypeError):
            raise CheckpointError(f"'{path}': its source metadata is incomplete; re-create it with `force shrink`") from None
        if tuple(net.program.get("input_shape", ())) != shape:
            raise CheckpointError(f"'{path}': its program takes {net.program.get('input_shape')} inputs but its "
                                  f"metadata says {list(shape)}; the file is corrupt, re-create it")
        ops = [op for op in net.program["ops"] if "original" in op]
        total = sum(math.prod(op["original"]) for op in ops)
        return net, metadata, (sum(op["kept_weights"] for op in ops), total), []
    ckpt = load_for_model(path)
    return model_from_checkpoint(ckpt), ckpt.metadata, (count_kept(ckpt.masks), count_total(ckpt.masks)), ckpt.warnings


def _evaluate_checkpoint(checkpoint, split, dataset, data_dir, download, device, batch_size, workers,
                         on_start, on_batch, on_warning) -> dict[str, Any]:
    dev = resolve_device(device)
    model, metadata, (kept, total), warnings = _load_network(checkpoint)
    for warning in warnings if on_warning is not None else ():
        on_warning(warning)
    name = dataset or metadata["dataset"]
    if data_dir is None and dataset in (None, metadata["dataset"]):
        data_dir = recorded_data_dir(metadata)
    info = dataset_info(name, data_dir)
    check_dataset_fits(info, metadata)
    model = model.to(dev).eval()

    val_fraction = checkpoint_fraction(metadata, info.name)
    seed = _recorded(metadata, "seed")
    if seed is None:
        seed = metadata.get("seed") if isinstance(metadata.get("seed"), int) else 0
    if not is_fraction(val_fraction):
        raise CheckpointError(f"'{checkpoint}' records the validation fraction {val_fraction!r}, not a number in "
                              "[0, 1); the file is corrupt")
    check_seed(seed, f"'{checkpoint}'")
    if split == "val" and not val_fraction:
        raise ConfigError(f"'{checkpoint}' was trained without a validation split (val_fraction 0); use --split test")
    # test: the whole test set; val and train: the training run's split of the training set
    splits = load_datasets(info.name, data_dir, download=download,
                           val_fraction=0.0 if split == "test" else float(val_fraction), seed=int(seed), augment=False)
    data = {"test": splits.test, "val": splits.val, "train": splits.train_eval}[split]
    if data is None or len(data) == 0:
        raise DataError(f"the {split} split of '{info.name}' is empty; choose another --split")
    if on_start is not None:
        on_start(len(data))
    sum_over_ranks = None
    if distributed.active():  # every N-th sample, no padding: each sample is counted exactly once
        data = Subset(data, range(distributed.rank(), len(data), distributed.world_size()))
        sum_over_ranks = distributed.all_reduce_sum_
    loader = make_loader(data, batch_size, shuffle=False, workers=workers, device=dev)
    metrics = evaluate(model, loader, dev, on_batch=on_batch, sum_over_ranks=sum_over_ranks)
    return {
        "checkpoint": str(checkpoint),
        "model": metadata["model"],
        "dataset": info.name,
        "split": split,
        "samples": metrics.samples,
        "loss": metrics.loss,
        "top1": metrics.top1,
        "top5": metrics.topk,
        "top5_k": metrics.k,
        "density": kept / total if total else 1.0,
        "stage": metadata["stage"],
    }
