"""The model as a list of channel-level operations, traced with torch.fx.

Shrinking needs to know, for every tensor the network computes, which operation made it from
which tensors: a convolution mixes channels, a ReLU or a pool keeps each channel apart, an
addition ties the channels of its inputs together, a concatenation or a flatten re-numbers them.
``torch.fx`` gives exactly that graph for any model whose forward has no data-dependent control
flow (every registry model, torchvision's ResNets and VGGs). Each fx node becomes one ``Node`` of
a small vocabulary (``KINDS``); anything else is refused with a ``ShrinkError`` that names the
layer, so an unknown operation can never be shrunk wrongly.
"""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from force_cli.errors import ShrinkError
from force_cli.safe_text import first_line

#: Kinds whose output channel c depends on input channel c only (and the input's channels are the output's).
PER_CHANNEL = ("relu", "batch_norm", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "slice", "alias")
#: Kinds that mix channels through a (masked) weight.
MIXING = ("conv2d", "linear")
KINDS = ("input", "output", "add", "cat", "pad", "flatten") + PER_CHANNEL + MIXING

SUPPORTED = ("Conv2d (groups 1), Linear, BatchNorm, ReLU, max/average pools, Dropout, Identity, "
             "flatten, +, torch.cat on channels, F.pad with zeros, strided slicing")


@dataclass
class Node:
    """One operation: ``kind`` on the outputs of ``inputs`` (earlier node indices).

    ``params`` are the JSON-able settings of the operation; ``module`` is the model's own layer for
    conv2d, linear and batch_norm (its weights), and ``weight`` the state_dict key of a conv2d or
    linear weight (the key of its mask).
    """

    kind: str
    layer: str
    inputs: list[int]
    params: dict[str, Any] = field(default_factory=dict)
    module: nn.Module | None = None
    weight: str | None = None


# Signatures of the functional forms, to read their arguments by name whatever way they were passed.
def _max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False): ...
def _avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None): ...
def _adaptive_avg_pool2d(input, output_size): ...
def _relu(input, inplace=False): ...
def _flatten(input, start_dim=0, end_dim=-1): ...
def _pad(input, pad, mode="constant", value=None): ...
def _add(input, other, alpha=1): ...
def _cat(tensors, dim=0): ...


_FUNCTIONS = {
    F.relu: ("relu", _relu), torch.relu: ("relu", _relu), "relu": ("relu", _relu),
    F.max_pool2d: ("max_pool2d", _max_pool2d), torch.max_pool2d: ("max_pool2d", _max_pool2d),
    F.avg_pool2d: ("avg_pool2d", _avg_pool2d), torch._C._nn.avg_pool2d: ("avg_pool2d", _avg_pool2d),
    F.adaptive_avg_pool2d: ("adaptive_avg_pool2d", _adaptive_avg_pool2d),
    torch.flatten: ("flatten", _flatten), "flatten": ("flatten", _flatten),
    F.pad: ("pad", _pad),
    operator.add: ("add", _add), operator.iadd: ("add", _add), torch.add: ("add", _add), "add": ("add", _add),
    torch.cat: ("cat", _cat), torch.concat: ("cat", _cat),
    operator.getitem: ("slice", None),
}


def _pair(value) -> list[int]:
    return list(value) if isinstance(value, (tuple, list)) else [value, value]


def _pool_params(kind: str, a: dict) -> dict:
    if kind == "adaptive_avg_pool2d":
        size = a["output_size"]
        if not all(isinstance(s, int) for s in _pair(size)):
            raise ValueError("an output size of None is not supported")
        return {"output_size": _pair(size)}
    if a.get("return_indices"):
        raise ValueError("return_indices is not supported")
    stride = a["stride"] if a["stride"] not in (None, [], ()) else a["kernel_size"]
    params = {"kernel_size": _pair(a["kernel_size"]), "stride": _pair(stride), "padding": _pair(a["padding"]),
              "ceil_mode": bool(a["ceil_mode"])}
    if kind == "max_pool2d":
        params["dilation"] = _pair(a["dilation"])
    else:
        if a["divisor_override"] is not None:
            raise ValueError("divisor_override is not supported")
        params["count_include_pad"] = bool(a["count_include_pad"])
    return params


def _module_node(module: nn.Module) -> tuple[str, dict]:
    """(kind, params) of a leaf module, or ValueError saying why it is not supported."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise ValueError("grouped convolutions, padding modes other than zeros and string padding are not supported")
        return "conv2d", {"stride": list(module.stride), "padding": list(module.padding), "dilation": list(module.dilation)}
    if isinstance(module, nn.Linear):
        return "linear", {}
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if module.running_mean is None:
            raise ValueError("batch norm without running statistics depends on the batch")
        return "batch_norm", {"eps": float(module.eps)}
    if isinstance(module, nn.ReLU):
        return "relu", {}
    if isinstance(module, (nn.Dropout, nn.Dropout2d, nn.Identity)):
        return "alias", {}
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise ValueError("only flatten(start_dim=1) is supported")
        return "flatten", {}
    table = {nn.MaxPool2d: ("max_pool2d", _max_pool2d), nn.AvgPool2d: ("avg_pool2d", _avg_pool2d),
             nn.AdaptiveAvgPool2d: ("adaptive_avg_pool2d", _adaptive_avg_pool2d)}
    if type(module) in table:
        kind, signature = table[type(module)]
        names = [p for p in inspect.signature(signature).parameters if p != "input"]
        return kind, _pool_params(kind, {n: getattr(module, n, None) for n in names})
    raise ValueError("this layer type is not supported")


def _slice_params(index) -> dict:
    """x[:, :, a:b:s, ...]: the channel dimension (and the batch) must be whole."""
    if not isinstance(index, tuple) or len(index) < 2 or not all(isinstance(i, slice) for i in index):
        raise ValueError("only slicing with ':' per dimension is supported")
    if any(s != slice(None) for s in index[:2]):
        raise ValueError("slicing the batch or channel dimension is not supported")
    rest = [[s.start, s.stop, s.step] for s in index[2:]]
    if not all(v is None or isinstance(v, int) for r in rest for v in r):
        raise ValueError("slice bounds must be integers")
    return {"dims": rest}


def _function_node(node: torch.fx.Node, index_of) -> tuple[str, dict, list[int]]:
    """(kind, params, input nodes) of a function or method call (a method's target is its name)."""
    if node.target not in _FUNCTIONS:
        raise ValueError("this operation is not supported")
    kind, signature = _FUNCTIONS[node.target]
    if kind == "slice":
        source, index = node.args
        return kind, _slice_params(index), [index_of(source)]
    a = inspect.signature(signature).bind(*node.args, **node.kwargs)
    a.apply_defaults()
    a = dict(a.arguments)
    if kind == "cat":
        if a["dim"] != 1 or not all(isinstance(t, torch.fx.Node) for t in a["tensors"]):
            raise ValueError("only torch.cat of tensors along dim 1 (channels) is supported")
        return kind, {}, [index_of(t) for t in a["tensors"]]
    if kind == "add":
        if not (isinstance(a["input"], torch.fx.Node) and isinstance(a["other"], torch.fx.Node)) or a["alpha"] != 1:
            raise ValueError("only the sum of two tensors is supported")
        return kind, {}, [index_of(a["input"]), index_of(a["other"])]
    source = [index_of(a["input"])]
    if kind == "relu":
        return kind, {}, source
    if kind == "flatten":
        if a["start_dim"] != 1 or a["end_dim"] != -1:
            raise ValueError("only flatten(x, 1) is supported")
        return kind, {}, source
    if kind == "pad":
        pad = list(a["pad"])
        if a["mode"] != "constant" or a["value"] not in (None, 0, 0.0) or len(pad) % 2 or len(pad) > 6 \
                or not all(isinstance(p, int) and p >= 0 for p in pad):
            raise ValueError("only zero padding by non-negative amounts, of at most three dimensions, is supported")
        return kind, {"pad": pad}, source
    return kind, _pool_params(kind, a), source


def trace(model: nn.Module) -> list[Node]:
    """The model's forward as ``Node``s in execution order; node 0 is the input, the last the output.

    Raises ShrinkError naming the layer of the first operation that is not in the vocabulary.
    """
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many types for dynamic control flow
        first = first_line(exc)
        raise ShrinkError(f"cannot trace the model with torch.fx ({first}); shrinking needs a forward "
                          "without data-dependent control flow") from None
    modules = dict(model.named_modules())
    nodes: list[Node] = []
    position: dict[str, int] = {}

    def index_of(arg) -> int:
        if not isinstance(arg, torch.fx.Node):
            raise ValueError("an operand that is not a tensor of the network is not supported")
        return position[arg.name]

    for fx_node in graph.nodes:
        try:
            if fx_node.op == "placeholder":
                if nodes:
                    raise ValueError("models with more than one input are not supported")
                node = Node("input", fx_node.name, [])
            elif fx_node.op == "output":
                result = fx_node.args[0]
                if not isinstance(result, torch.fx.Node):
                    raise ValueError("models must return one tensor")
                node = Node("output", "output", [index_of(result)])
            elif fx_node.op == "call_module":
                module = modules[fx_node.target]
                kind, params = _module_node(module)
                if len(fx_node.args) != 1 or fx_node.kwargs:
                    raise ValueError("a layer called with more than its input is not supported")
                weight = f"{fx_node.target}.weight" if kind in MIXING else None
                node = Node(kind, fx_node.target, [index_of(fx_node.args[0])], params, module, weight)
            elif fx_node.op in ("call_function", "call_method"):
                kind, params, inputs = _function_node(fx_node, index_of)
                node = Node(kind, fx_node.name, inputs, params)
            else:  # get_attr: a tensor held by the model, used directly
                raise ValueError("tensors used outside a layer are not supported")
        except ValueError as exc:
            what = fx_node.target if fx_node.op == "call_module" else fx_node.name
            described = type(modules[fx_node.target]).__name__ if fx_node.op == "call_module" else str(fx_node.target)
            raise ShrinkError(f"cannot shrink layer '{what}' ({described}): {exc}; shrinking handles {SUPPORTED}") from None
        position[fx_node.name] = len(nodes)
        nodes.append(node)
    return nodes
