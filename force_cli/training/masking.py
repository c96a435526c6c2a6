"""Mask enforcement during training (the one mechanism force-cli uses).

  1. the pruned weights are zeroed once, before the first step;
  2. after every ``backward()`` the gradients are multiplied by the masks, so momentum buffers and
     Adam's moments of a pruned weight stay exactly zero;
  3. after every ``optimizer.step()`` the weights are multiplied by the masks again, which undoes
     anything an optimizer could still do to a pruned weight (weight decay, a stale buffer, ...).
A pruned weight is therefore exactly 0 after every step, whatever the optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from force_cli.errors import CheckpointError
from force_cli.pruning.masks import prunable_weights


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
