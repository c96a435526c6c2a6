"""The smallest dense network that computes exactly what a masked network computes (eval mode).

``shrink_model`` traces the model (``graph``), finds the channels each tensor must keep
(``liveness``) and writes the program (``program``) over the kept channels only:

  * a conv or linear layer keeps the rows of its kept output channels and the columns of its
    input's kept channels;
  * an input channel it drops but that is a constant (it depends on no input: its own inputs were
    all pruned, so it holds relu(bias), a batch-norm shift, ...) is folded into the layer's bias.
    Constants are taken from one run of the masked network on a zero input, in float64; through a
    zero-padded convolution a constant is not the same at the borders, and then the layer gets a
    per-position ``bias_map`` instead of a per-channel bias;
  * a batch norm right after a conv or linear layer (its only reader) is folded into that layer.

Everything is computed in float64 and cast to the model's dtype at the end; the result is checked
against the masked model on random inputs before it is returned (``ShrinkError`` if not: a bug).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from force_cli.errors import ShrinkError
from force_cli.shrink.graph import MIXING, Node, trace
from force_cli.shrink.liveness import Channels, analyse, channel_padding
from force_cli.shrink.program import run_op

#: Largest |shrunk - masked| allowed by the self-check, relative to the largest |masked output| (float64).
SELF_CHECK_TOLERANCE = 1e-9


@dataclass
class Shrunk:
    program: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def _bn_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as y = x * scale + shift."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale.detach(), shift.detach()


def _run_full(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
    """A node of the original (masked, float64) network on full tensors."""
    if node.kind in ("conv2d", "linear", "batch_norm"):
        return node.module(args[0])
    if node.kind in ("alias", "output", "input"):
        return args[0]
    return run_op({"op": node.kind, **node.params}, args, {})


def record(nodes: list[Node], x: torch.Tensor) -> list[torch.Tensor]:
    values: list[torch.Tensor] = [x]
    for node in nodes[1:]:
        values.append(_run_full(node, [values[j] for j in node.inputs]))
    return values


def _unique(name: str, taken: dict) -> str:
    candidate, k = name, 1
    while candidate in taken:
        k += 1
        candidate = f"{name}#{k}"
    return candidate


class _Writer:
    def __init__(self, nodes: list[Node], values: list[torch.Tensor], channels: Channels, masks):
        self.nodes, self.values, self.ch, self.masks = nodes, values, channels, masks
        self.ops: list[dict] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.value_of: dict[int, int] = {0: 0}
        self.readers = [0] * len(nodes)
        for node in nodes:
            for j in node.inputs:
                self.readers[j] += 1

    def kept(self, i: int) -> torch.Tensor:
        return self.ch.kept[i].nonzero().flatten()

    def add_tensor(self, layer: str, what: str, value: torch.Tensor) -> str:
        name = _unique(f"{layer}.{what}", self.tensors)
        self.tensors[name] = value.contiguous()
        return name

    def emit(self, i: int, op: dict) -> None:
        op["in"] = [self.value_of[j] for j in self.nodes[i].inputs]
        self.ops.append(op)
        self.value_of[i] = len(self.ops)

    def folded_norm(self, i: int) -> int | None:
        """The batch norm that is the only reader of node i's output, if any."""
        if self.readers[i] != 1:
            return None
        for k in range(i + 1, len(self.nodes)):
            if i in self.nodes[k].inputs:
                return k if self.nodes[k].kind == "batch_norm" else None
        return None

    def mixing(self, i: int, node: Node) -> int | None:
        j = node.inputs[0]
        x = self.values[j]
        weight = node.module.weight.detach()
        bias = node.module.bias.detach() if node.module.bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)
        kin, kout = self.kept(j), self.kept(i)
        w = weight[kout]
        constant = ~self.ch.kept[j] & ~self.ch.varying[j]  # dropped inputs that are constants: fold them
        spatial = node.kind == "conv2d"
        if constant.any():  # only the constant channels' part of the layer
            xc, wc = x[:, constant], w[:, constant]
            if spatial:
                const = F.conv2d(xc, wc, bias[kout], node.params["stride"], node.params["padding"], node.params["dilation"])[0]
            else:
                const = F.linear(xc, wc, bias[kout])[0]
        else:
            const = bias[kout].view(-1, 1, 1) if spatial else bias[kout]
        w = w[:, kin]
        norm = self.folded_norm(i)
        if norm is not None:
            scale, shift = _bn_scale_shift(self.nodes[norm].module)
            shape = (-1,) + (1,) * (w.dim() - 1)
            w = w * scale[kout].view(shape)
            cshape = (-1, 1, 1) if spatial else (-1,)
            const = const * scale[kout].view(cshape) + shift[kout].view(cshape)
        op: dict[str, Any] = {"op": node.kind, "layer": node.layer, **node.params,
                              "original": list(weight.shape), "kept_weights": int(self.masks[node.weight].count_nonzero()),
                              "positions": int(self.values[i][0, 0].numel()) if spatial else 1}
        if spatial:
            op["output_size"] = list(self.values[i].shape[2:])
        op["weight"] = self.add_tensor(node.layer, "weight", w)
        if spatial and not bool((const == const[:, :1, :1]).all()):
            op["bias"] = None
            op["bias_map"] = self.add_tensor(node.layer, "bias_map", const)
        else:
            op["bias"] = self.add_tensor(node.layer, "bias", const[:, 0, 0] if spatial else const)
        self.emit(i, op)
        return norm

    def other(self, i: int, node: Node) -> None:
        op: dict[str, Any] = {"op": node.kind, "layer": node.layer, **node.params}
        if node.kind == "batch_norm":
            scale, shift = _bn_scale_shift(node.module)
            keep = self.kept(i)
            op = {"op": "affine", "layer": node.layer, "scale": self.add_tensor(node.layer, "scale", scale[keep]),
                  "shift": self.add_tensor(node.layer, "shift", shift[keep])}
        elif node.kind == "pad":
            j = node.inputs[0]
            ndim = self.values[j].dim()
            before, _ = channel_padding(node.params["pad"], ndim)
            if before or len(node.params["pad"]) > 2 * (ndim - 2):
                kept_out, width = self.ch.kept[i], self.values[j].shape[1]
                k = 2 * (ndim - 2)
                pad = list(node.params["pad"])
                pad[k], pad[k + 1] = int(kept_out[:before].sum()), int(kept_out[before + width:].sum())
                op["pad"] = pad
        self.emit(i, op)

    def write(self) -> Shrunk:
        folded: set[int] = set()
        for i, node in enumerate(self.nodes[1:], 1):
            if node.kind in ("alias", "output") or i in folded:
                self.value_of[i] = self.value_of[node.inputs[0]]
            elif node.kind in MIXING:
                norm = self.mixing(i, node)
                if norm is not None:
                    folded.add(norm)
            else:
                self.other(i, node)
        program = {"input_shape": list(self.values[0].shape[1:]), "ops": self.ops,
                   "output": self.value_of[len(self.nodes) - 1]}
        return Shrunk(program, self.tensors)


def run_program(shrunk: Shrunk, x: torch.Tensor) -> torch.Tensor:
    values = [x]
    for op in shrunk.program["ops"]:
        values.append(run_op(op, [values[i] for i in op["in"]], shrunk.tensors))
    return values[shrunk.program["output"]]


def _float64_copy(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """The model in float64 on the CPU, eval mode, pruned weights zero; one copy of each tensor."""
    memo: dict[int, Any] = {}
    with torch.no_grad():
        for name, p in model.named_parameters():
            value = p.detach().to("cpu", torch.float64, copy=True)
            if name in masks:
                value.masked_fill_(~masks[name].cpu(), 0)
            memo[id(p)] = nn.Parameter(value, requires_grad=False)
        for b in model.buffers():
            memo[id(b)] = b.detach().to("cpu", torch.float64 if b.is_floating_point() else b.dtype, copy=True)
    return copy.deepcopy(model, memo).eval()


def shrink_model(model: nn.Module, masks: dict[str, torch.Tensor], input_shape: tuple[int, ...], *,
                 remove: bool = True) -> Shrunk:
    """The shrunk program of ``model`` under ``masks`` for inputs of ``input_shape`` (no batch).

    The model and masks are not modified. Raises ShrinkError naming the first layer it cannot handle.
    ``remove=False``: every channel kept (the masked network as a program, batch norms folded).
    """
    dtype = next(model.parameters()).dtype
    work = _float64_copy(model, masks)
    nodes = trace(work)
    for node in nodes:
        if node.kind in MIXING and node.weight not in masks:
            raise ShrinkError(f"layer '{node.layer}' has no mask; shrink a checkpoint written by `force prune`")
    with torch.no_grad():
        values = record(nodes, torch.zeros(1, *input_shape, dtype=torch.float64))
        channels = analyse(nodes, [tuple(v.shape) for v in values], {k: m.cpu() for k, m in masks.items()}, remove)
        shrunk = _Writer(nodes, values, channels, masks).write()
        _self_check(work, shrunk, input_shape)
    shrunk.tensors = {k: v.to(dtype) for k, v in shrunk.tensors.items()}
    return shrunk


def _self_check(work: nn.Module, shrunk: Shrunk, input_shape: tuple[int, ...]) -> None:
    x = torch.randn(2, *input_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected, got = work(x), run_program(shrunk, x)
    scale = float(expected.abs().max()) or 1.0
    if got.shape != expected.shape or float((got - expected).abs().max()) > SELF_CHECK_TOLERANCE * scale:
        raise ShrinkError("the shrunk network does not compute what the masked one does (a bug in force-cli's "
                          "shrink; please report it with the model's name)")
