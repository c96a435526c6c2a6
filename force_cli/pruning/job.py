"""`force prune` as a library call: settings in, checkpoint file out.

Validates everything that can be checked cheaply (names, ranges, device, output path, model/dataset
fit) before any data is loaded or any model is built, then builds the model from the seed, prunes
a private copy, and writes the checkpoint atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from force_cli import distributed
from force_cli.checkpoint import check_new_output, save_checkpoint
from force_cli.checkpoint.metadata import provenance
from force_cli.config import PruneConfig
from force_cli.data import BatchStream, dataset_info, load_datasets
from force_cli.data.holdout import default_fraction
from force_cli.device import resolve_device
from force_cli.models import build_model, check_compatible
from force_cli.pruning.checks import default_output, validate
from force_cli.pruning.connectivity import check_connectivity
from force_cli.pruning.loop import PruneResult, StepInfo, prune
from force_cli.pruning.methods import get_method


def prune_to_checkpoint(
    cfg: PruneConfig,
    output: Path | None = None,
    *,
    overwrite: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    compact: bool = False,
    invert_scores: bool = False,
    extra_metadata: dict | None = None,
) -> tuple[Path, PruneResult]:
    """Build the model ``cfg`` describes, prune it, write the checkpoint; return its path and the result.

    ``on_start(steps)`` is called once the number of pruning steps is known (for progress bars).
    ``compact`` writes the compact variant of the format (kept values only). ``invert_scores``
    keeps the lowest scores (``force ablate --invert-scores``), and ``extra_metadata`` is added to
    the checkpoint's metadata.
    """
    validate(cfg)
    output = Path(output) if output is not None else default_output(cfg)
    check_new_output(output, overwrite)
    # Under torchrun every rank scores its share of the batches; rank 0 alone writes the checkpoint.
    with distributed.session(cfg.device or "auto") as device:
        return _prune(cfg, output, resolve_device(device), on_step, on_start, compact, invert_scores,
                      extra_metadata or {})


def _prune(cfg: PruneConfig, output: Path, device: torch.device, on_step, on_start, compact: bool,
           invert_scores: bool = False, extra_metadata: dict | None = None) -> tuple[Path, PruneResult]:
    method = get_method(cfg.method)
    info = dataset_info(cfg.dataset, cfg.data_dir)
    model_args = dict(num_classes=info.num_classes, in_channels=info.in_channels,
                      image_size=info.image_size, imagenet_style=info.imagenet_style)
    check_compatible(cfg.model, **model_args)

    val_fraction = default_fraction(info.name, cfg.val_fraction)  # resolved: imagefolder's own data folder
    stream = None
    if method.needs_data:
        # The same split `train` makes with the same seed: validation images stay unseen.
        splits = load_datasets(cfg.dataset, cfg.data_dir, download=cfg.download, seed=cfg.seed,
                               val_fraction=val_fraction)
        stream = BatchStream(splits.train, cfg.batch_size, seed=cfg.seed)

    model = build_initial_model(cfg, model_args).to(device)
    steps = method.steps_for(cfg.steps)
    if on_start is not None:
        on_start(steps)
    result = prune(
        model, method=cfg.method, sparsity=cfg.sparsity, steps=steps, schedule=cfg.schedule, stream=stream,
        num_batches=cfg.batches, input_shape=(info.in_channels, info.image_size, info.image_size),
        seed=cfg.seed, saliency_loss=cfg.saliency_loss, saliency_temperature=cfg.saliency_temperature,
        budget=cfg.budget, ties=cfg.ties, invert_scores=invert_scores, on_step=on_step,
    )
    connectivity = check_connectivity(model, result, (info.in_channels, info.image_size, info.image_size),
                                      allow=cfg.allow_disconnected)
    objective = result.objective
    settings = asdict(cfg) | {
        "steps": result.steps,
        "saliency_loss": objective.name if objective else None,
        "saliency_temperature": objective.temperature if objective and objective.name == "cross-entropy" else None,
        "val_fraction": val_fraction,
    }
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
        # what the pruning run found out about its own mask (see check_connectivity)
        "pruning_result": connectivity | {"unranked_steps": result.unranked_steps, "warnings": result.warnings},
        "seed": cfg.seed,
        **provenance(),
        **(extra_metadata or {}),
    }
    if distributed.is_main():
        save_checkpoint(output, model.state_dict(), result.masks, metadata, compact=compact)
    distributed.barrier()
    return output, result


def build_initial_model(cfg: PruneConfig, model_args: dict):
    """The network `force prune` starts from, θ0: seeded with ``cfg.seed``, then built and initialised."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, init=cfg.init, **model_args)
