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
from force_cli import distributed
from force_cli.checkpoint import check_new_output, save_checkpoint
from force_cli.config import PruneConfig
from force_cli.data import BatchStream, dataset_info, load_datasets
from force_cli.device import resolve_device
from force_cli.errors import DisconnectedError
from force_cli.models import build_model, check_compatible
from force_cli.pruning.checks import default_output, validate
from force_cli.pruning.loop import PruneResult, StepInfo, prune
from force_cli.pruning.methods import get_method
from force_cli.pruning.masks import prunable_weights


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

    val_fraction = holdout_fraction(cfg, info.name)
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
        "force_cli_version": force_cli.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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


def holdout_fraction(cfg: PruneConfig, dataset: str) -> float:
    """The validation fraction `train` will hold out by default, which pruning must not draw from.

    ``dataset`` is the registry name of ``cfg.dataset`` (already resolved, with its data folder)."""
    if cfg.val_fraction is not None:
        return cfg.val_fraction
    from force_cli.training.settings import TRAIN_DEFAULTS

    return float(TRAIN_DEFAULTS.get(dataset, {}).get("val_fraction", 0.0))


def _step_ranges(steps: list[int]) -> str:
    """[3, 4, 5, 9] -> '3-5, 9'."""
    parts, start = [], None
    for i, s in enumerate(steps):
        if start is None:
            start = s
        if i + 1 == len(steps) or steps[i + 1] != s + 1:
            parts.append(f"{start}" if start == s else f"{start}-{s}")
            start = None
    return ", ".join(parts)


def check_connectivity(model, result: PruneResult, input_shape: tuple[int, ...], *, allow: bool) -> dict:
    """Refuse (or, with ``allow``, warn about) a mask that cannot learn; warn about an unranked last step.

    A network is disconnected when no path of kept weights links input and output (effective
    density 0) or when its output layer, the last prunable layer, keeps no weight. Warnings are
    appended to ``result.warnings``; the effective density is returned for the metadata.
    """
    from force_cli.report import effective_masks

    effective = effective_masks(model, result.masks, input_shape)
    effective_kept = sum(int(m.sum()) for m in effective.values())
    output_layer = list(prunable_weights(model))[-1]
    unranked = result.unranked_steps
    # Only the last step decides the mask: earlier ties among zero scores are re-scored by the next
    # step (dead units whose weights all score 0 are common and harmless there). They are recorded.
    if result.steps in unranked:
        result.warnings.append(
            f"the last pruning step had fewer non-zero scores than weights to keep, so some of the kept "
            f"weights were chosen by position, not by score (unranked steps: {_step_ranges(unranked)}); "
            f"more --steps or a lower --sparsity lets the criterion rank them"
        )
    problem = None
    if not bool(result.masks[output_layer].any()):  # the more specific of the two: say it first
        problem = f"the output layer '{output_layer}' keeps no weight"
    elif effective_kept == 0:
        problem = "no path of kept weights links the input to the output (effective density 0)"
    if problem is not None:
        advice = "use more --steps or a lower --sparsity"
        if not allow:
            raise DisconnectedError(f"pruning left a network that cannot learn: {problem}; {advice}, "
                                    f"or pass --allow-disconnected to write it anyway")
        result.warnings.append(f"the network cannot learn: {problem} ({advice})")
    return {"effective_density": effective_kept / result.total, "disconnected": problem is not None}
