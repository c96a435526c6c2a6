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
    return int(sum(int(m.sum()) for m in masks.values()))


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


def keep_top_k(scores: Mapping[str, torch.Tensor], k: int, *, return_threshold: bool = False):
    """Global top-k over all layers: exactly ``k`` weights kept, higher score kept.

    Ties at the threshold are broken deterministically: the tied weights that come first
    (in layer order, then in row-major order inside a layer) are kept. NaN scores rank lowest.
    The inputs are not modified. With ``return_threshold``, returns ``(masks, threshold)``:
    the k-th largest score as a float (None when k is 0 or every weight).
    """
    names = list(scores)
    total = sum(scores[n].numel() for n in names)
    if not 0 <= k <= total:
        raise ConfigError(f"cannot keep {k} of {total} weights")
    if k == total or k == 0:
        masks = {n: torch.full_like(scores[n], k == total, dtype=torch.bool) for n in names}
        return (masks, None) if return_threshold else masks
    threshold = kth_largest([scores[n].detach().reshape(-1) for n in names], k)
    masks = {n: scores[n].detach() > threshold for n in names}
    missing = k - sum(int(torch.count_nonzero(m)) for m in masks.values())
    for n in names:  # keep the first `missing` weights tied at the threshold, in layer then index order
        if missing <= 0:
            break
        tied = torch.nonzero(scores[n].detach().reshape(-1) == threshold).flatten()[:missing]
        masks[n].view(-1)[tied] = True
        missing -= tied.numel()
    for n in names:  # only when k exceeds the number of non-NaN scores: NaNs come last
        if missing <= 0:
            break
        tied = torch.nonzero(torch.isnan(scores[n].detach().reshape(-1))).flatten()[:missing]
        masks[n].view(-1)[tied] = True
        missing -= tied.numel()
    return (masks, float(threshold)) if return_threshold else masks


_SAMPLE = 1 << 16


def kth_largest(parts: list[torch.Tensor], k: int) -> torch.Tensor:
    """The k-th largest value of the concatenation of ``parts`` (NaN counts as smallest), exactly.

    A full selection over tens of millions of scores costs more than a forward-backward pass, so
    for large inputs a strided sample brackets the answer in [lo, hi]; one counting pass and one
    filtering pass then reduce the exact selection to the few values inside the bracket. If the
    bracket misses (it cannot be wrong, only miss), fall back to a full selection.
    """
    total = sum(p.numel() for p in parts)
    if total > 4 * _SAMPLE:
        stride = total // _SAMPLE
        sample = torch.cat([p[::stride] for p in parts])
        sample = sample[~torch.isnan(sample)].sort(descending=True).values
        if sample.numel() > 0:
            q = k / total * sample.numel()
            margin = 4.0 * (q * (1 - k / total)) ** 0.5 + 16
            hi = sample[max(0, int(q - margin))]
            lo = sample[min(sample.numel() - 1, int(q + margin))]
            above = sum(int(torch.count_nonzero(p > hi)) for p in parts)
            if above < k:
                window = torch.cat([p[(p >= lo) & (p <= hi)] for p in parts])
                need = k - above  # the answer is the need-th largest value inside [lo, hi]
                if need <= window.numel():
                    return torch.kthvalue(window, window.numel() - need + 1).values
    flat = torch.cat(parts)
    if flat.is_floating_point():
        flat = torch.nan_to_num(flat, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
    return torch.kthvalue(flat, total - k + 1).values


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
