"""Whether a mask leaves a network that can learn: effective masks, and pruning's check of its result.

Effective density: a kept weight that lies on no path from the input to the output through kept
weights cannot influence the output, so it counts as removed (Vysogorets & Kempe, 2021). It is
computed exactly by a reachability pass: on a copy of the network with every kept weight set to 1,
biases to 0, normalisation layers removed and max-pools replaced by average pools, each layer's
output is binarised (reached from the input or not) on the way forward and each gradient
binarised (reaches the output or not) on the way back. A kept weight is effective iff its
gradient is non-zero. Binarising keeps every value small, so no depth can overflow or underflow.

The pass runs at the input size the checkpoint's metadata claims, which the weights of a conv net
do not bound. `force inspect` therefore counts first, on the meta device (no memory), the
activations the pass would hold (``reachability_size``), and skips the effective density with a
warning beyond ``REACHABILITY_BUDGET`` (about 16 bytes each): a small file cannot make inspect use
gigabytes.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from force_cli.errors import DisconnectedError
from force_cli.pruning.loop import PruneResult
from force_cli.pruning.masks import PRUNABLE_LAYERS, Masks, prunable_weights

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
_MAX_POOLS = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}
_ADAPTIVE_MAX_POOLS = {nn.AdaptiveMaxPool1d: nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
                       nn.AdaptiveMaxPool3d: nn.AdaptiveAvgPool3d}


def _linearise(module: nn.Module) -> None:
    """Replace, in place, layers that could hide a path: norms subtract means, max-pools pick one input."""
    for name, child in module.named_children():
        if isinstance(child, _NORMS):
            setattr(module, name, nn.Identity())
        elif type(child) in _MAX_POOLS:
            setattr(module, name, _MAX_POOLS[type(child)](child.kernel_size, child.stride, child.padding,
                                                          ceil_mode=child.ceil_mode))
        elif type(child) in _ADAPTIVE_MAX_POOLS:
            setattr(module, name, _ADAPTIVE_MAX_POOLS[type(child)](child.output_size))
        else:
            _linearise(child)


#: Activation elements `force inspect`'s reachability pass may hold (float64 values and their
#: gradients, about 16 bytes each: 2 GiB). An ImageNet ResNet-50 at 224 px needs 32 M, a VGG-19 46 M;
#: a CIFAR ResNet-18 that claims 512 px inputs would need 363 M.
REACHABILITY_BUDGET = 1 << 27


def reachability_size(model: nn.Module, input_shape: tuple[int, ...]) -> int | None:
    """The activation elements the reachability pass of ``model`` holds, counted by running it on
    the meta device (shapes only); None when its forward cannot run there."""
    probe = copy.deepcopy(model).to("meta")
    _linearise(probe)
    count = math.prod(input_shape)

    def add(module, inputs, output):
        nonlocal count
        if isinstance(output, torch.Tensor) and next(module.children(), None) is None:
            count += output.numel()

    handles = [m.register_forward_hook(add) for m in probe.modules()]
    try:
        probe(torch.empty((1, *input_shape), device="meta"))
    except Exception:  # a forward that needs real values (.item(), say): not counted
        return None
    finally:
        for h in handles:
            h.remove()
    return count


def _binarise_output(module, inputs, output):
    reached = (output > 0).to(output.dtype)
    out = output + (reached - output).detach()  # value: reached-or-not; gradient: passes straight through
    out.register_hook(lambda grad: (grad > 0).to(grad.dtype))
    return out


def effective_masks(model: nn.Module, masks: Masks, input_shape: tuple[int, ...]) -> Masks:
    """Kept weights that lie on at least one input-to-output path through kept weights."""
    work = copy.deepcopy(model).cpu().double().eval()
    _linearise(work)
    weights = prunable_weights(work)
    with torch.no_grad():
        for name, p in work.named_parameters():
            if name in weights:
                p.copy_(masks[name].to(p.dtype))
            else:
                p.zero_()
    for name, w in weights.items():
        w.requires_grad_(True)
    handles = [m.register_forward_hook(_binarise_output) for m in work.modules() if isinstance(m, PRUNABLE_LAYERS)]
    try:
        work(torch.ones((1, *input_shape), dtype=torch.float64)).sum().backward()
    finally:
        for h in handles:
            h.remove()
    return {name: masks[name] & (w.grad > 0) for name, w in weights.items()}


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
