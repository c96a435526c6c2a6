"""Masks keyed by parameter name, and the one global top-k that turns scores into masks.

A mask set is a plain ``dict[str, torch.BoolTensor]`` mapping a prunable parameter's name (its
``state_dict`` key, e.g. ``layer1.0.conv1.weight``) to a boolean tensor of the same shape, ``True``
meaning *kept*. Names, never positions, tie a mask to its layer.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from force_cli.errors import CheckpointError, ConfigError
from force_cli.pruning import topk

Masks = dict[str, torch.Tensor]
Scores = dict[str, torch.Tensor]

#: Layer types whose ``weight`` is prunable (biases and norm layers are always kept, as in the paper).
PRUNABLE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The ``weight`` of every Conv and Linear layer, by ``state_dict`` name, in module order."""
    weights = {}
    for module_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_LAYERS) and module.weight is not None:
            weights[f"{module_name}.weight" if module_name else "weight"] = module.weight
    return weights


def dense_masks(model: nn.Module) -> Masks:
    """All-``True`` masks for every prunable weight (the starting point of iterative pruning)."""
    return {name: torch.ones_like(w, dtype=torch.bool) for name, w in prunable_weights(model).items()}


def count_total(masks: Mapping[str, torch.Tensor]) -> int:
    return sum(m.numel() for m in masks.values())


def count_kept(masks: Mapping[str, torch.Tensor]) -> int:
    """The weights kept over all ``masks``, read back once (on a GPU, one wait instead of one per layer)."""
    if not masks:
        return 0
    return int(torch.stack([m.sum() for m in masks.values()]).sum())


def kept_for_sparsity(total: int, sparsity: float) -> int:
    """``k = round((1 - s) * N)``: the exact number of weights kept at sparsity ``s``.

    Refuses sparsities outside [0, 1) and ones so high that no weight would remain.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity {sparsity} is outside [0, 1); give the fraction of weights to remove, e.g. 0.99")
    k = round((1.0 - sparsity) * total)
    if k < 1:
        raise ConfigError(
            f"sparsity {sparsity} keeps fewer than one of the model's {total} prunable weights; "
            f"use a sparsity below {1 - 0.5 / total:.6g}"
        )
    return k


def keep_top_k(scores: Mapping[str, torch.Tensor], k: int, *, return_threshold: bool = False,
               workspace: topk.Workspace | None = None):
    """Global top-k over all layers: exactly ``k`` weights kept, higher score kept.

    Ties at the threshold are broken deterministically: the tied weights that come first
    (in layer order, then in row-major order inside a layer) are kept. NaN scores rank lowest.
    The inputs are not modified. The selection itself is ``topk.top_k_masks``. With
    ``return_threshold``, returns ``(masks, threshold)``: the k-th largest score as a float (NaN
    counted as -inf; None when k is 0 or every weight). A pruning run passes one ``workspace`` to
    all its steps, so that the selection's scratch buffers are allocated once.
    """
    names = list(scores)
    total = sum(scores[n].numel() for n in names)
    if not 0 <= k <= total:
        raise ConfigError(f"cannot keep {k} of {total} weights")
    if k == total or k == 0:
        masks = {n: torch.full_like(scores[n], k == total, dtype=torch.bool) for n in names}
        return (masks, None) if return_threshold else masks
    kept, threshold = topk.top_k_masks_and_threshold([scores[n].detach().reshape(-1) for n in names], k, workspace)
    masks = {n: m.view(scores[n].shape) for n, m in zip(names, kept)}
    return (masks, threshold) if return_threshold else masks


def validate_masks(masks: Mapping[str, torch.Tensor], model: nn.Module) -> None:
    """Check that ``masks`` fits ``model``: one boolean mask per prunable weight, same shapes.

    Raises CheckpointError naming the first missing, extra or mis-shaped mask.
    """
    weights = prunable_weights(model)
    missing = [n for n in weights if n not in masks]
    extra = [n for n in masks if n not in weights]
    if missing:
        raise CheckpointError(f"no mask for prunable weight '{missing[0]}' ({len(missing)} missing); the checkpoint was made for a different model")
    if extra:
        raise CheckpointError(f"mask '{extra[0]}' matches no prunable weight of the model ({len(extra)} extra); the checkpoint was made for a different model")
    for name, w in weights.items():
        if tuple(masks[name].shape) != tuple(w.shape):
            raise CheckpointError(
                f"mask '{name}' has shape {tuple(masks[name].shape)} but the model's weight has {tuple(w.shape)}; "
                "the checkpoint was made for a different model or dataset"
            )
        if masks[name].dtype != torch.bool:
            raise CheckpointError(f"mask '{name}' has dtype {masks[name].dtype}, expected bool; the file was not written by force")


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights of ``model`` in place."""
    for name, w in prunable_weights(model).items():
        w.mul_(masks[name].to(device=w.device, dtype=w.dtype))
