"""`force prune` as a library call: settings in, checkpoint file out.

Validates everything that can be checked cheaply (names, ranges, device, output path, model/dataset
fit) before any data is loaded or any model is built, then builds the model from the seed, prunes
a private copy, and writes the checkpoint atomically.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

import force_cli
from force_cli.checkpoint import check_new_output, save_checkpoint
from force_cli.config import PruneConfig
from force_cli.data import BatchStream, dataset_info, load_datasets
from force_cli.device import resolve_device
from force_cli.errors import ConfigError, UnknownNameError
from force_cli.models import INIT_SCHEMES, MODELS, build_model, check_compatible
from force_cli.pruning.criteria import get_method
from force_cli.pruning.loop import PruneResult, StepInfo, prune
from force_cli.pruning.schedules import SCHEDULES


def default_output(cfg: PruneConfig) -> Path:
    return Path(f"{cfg.model}-{cfg.dataset}-{cfg.method}-s{cfg.sparsity:g}-seed{cfg.seed}.safetensors")


def validate(cfg: PruneConfig) -> None:
    """Every check that needs neither data nor a model."""
    if cfg.model is None:
        raise ConfigError(f"no model given; pass --model (known models: {', '.join(sorted(MODELS))})")
    if cfg.model not in MODELS:
        raise UnknownNameError("model", cfg.model, MODELS)
    get_method(cfg.method)
    if cfg.schedule not in SCHEDULES:
        raise UnknownNameError("schedule", cfg.schedule, SCHEDULES)
    if cfg.init not in INIT_SCHEMES:
        raise UnknownNameError("init", cfg.init, INIT_SCHEMES)
    if cfg.sparsity is None:
        raise ConfigError("no sparsity given; pass --sparsity, the fraction of weights to remove (e.g. 0.99)")
    if not 0.0 <= cfg.sparsity < 1.0:
        raise ConfigError(f"sparsity {cfg.sparsity} is outside [0, 1); give the fraction of weights to remove, e.g. 0.99")
    for name in ("batches", "batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.steps is not None and cfg.steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {cfg.steps}")


def prune_to_checkpoint(
    cfg: PruneConfig,
    output: Path | None = None,
    *,
    overwrite: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> tuple[Path, PruneResult]:
    """Build the model ``cfg`` describes, prune it, write the checkpoint; return its path and the result.

    ``on_start(steps)`` is called once the number of pruning steps is known (for progress bars).
    """
    validate(cfg)
    output = Path(output) if output is not None else default_output(cfg)
    check_new_output(output, overwrite)
    device = resolve_device(cfg.device)
    method = get_method(cfg.method)
    info = dataset_info(cfg.dataset, cfg.data_dir)
    model_args = dict(num_classes=info.num_classes, in_channels=info.in_channels,
                      image_size=info.image_size, imagenet_style=info.imagenet_style)
    check_compatible(cfg.model, **model_args)

    stream = None
    if method.needs_data:
        splits = load_datasets(cfg.dataset, cfg.data_dir, download=cfg.download, seed=cfg.seed)
        stream = BatchStream(splits.train, cfg.batch_size, seed=cfg.seed)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, init=cfg.init, **model_args).to(device)
    steps = method.steps_for(cfg.steps)
    if on_start is not None:
        on_start(steps)
    result = prune(
        model, method=cfg.method, sparsity=cfg.sparsity, steps=steps, schedule=cfg.schedule, stream=stream,
        num_batches=cfg.batches, input_shape=(info.in_channels, info.image_size, info.image_size),
        seed=cfg.seed, on_step=on_step,
    )
    settings = asdict(cfg) | {"steps": result.steps}
    metadata = {
        "stage": "init",
        "model": cfg.model,
        "model_args": model_args,
        "init": cfg.init,
        "dataset": cfg.dataset,
        "method": cfg.method,
        "pruning": settings,
        "target_sparsity": cfg.sparsity,
        "achieved_sparsity": result.sparsity,
        "seed": cfg.seed,
        "force_cli_version": force_cli.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    save_checkpoint(output, model.state_dict(), result.masks, metadata)
    return output, result
