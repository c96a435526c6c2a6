"""A shrunk network as data: a list of operations (JSON) over named tensors (safetensors).

The file (format ``force-shrunk/1``) is one ``.safetensors`` file; nothing in it is pickled or
executed. Its metadata holds ``format``, ``program`` (JSON, below) and the source checkpoint's
metadata (model, model_args, dataset, ...) so that `force eval` knows the data it was made for.

``program``: ``{"input_shape": [C, H, W], "ops": [...], "output": V}``. Value 0 is the network's
input; op ``i`` computes value ``i + 1`` from the values listed in its ``in``. Each op is one of:

  * ``conv2d`` (``weight``, ``bias`` or null, ``stride``, ``padding``, ``dilation``, ``output_size``) and ``linear``
    (``weight``, ``bias`` or null), then ``+ bias_map`` when the op has one (a per-position bias:
    a removed constant channel seen through zero padding is not the same at the borders);
    with ``"format": "csr"`` the weight is instead ``crow``, ``col``, ``values`` of a CSR matrix
    of shape ``shape`` (out, in*kh*kw) and the op runs through ``torch.sparse.mm``;
  * ``affine`` (``scale``, ``shift``: a batch norm in eval mode), ``relu``, ``max_pool2d``,
    ``avg_pool2d``, ``adaptive_avg_pool2d`` (their ``torch.nn.functional`` arguments), ``flatten``
    (from dimension 1), ``add``, ``cat`` (channels), ``pad`` (``torch.nn.functional.pad``'s ``pad``)
    and ``slice`` (``dims``: ``[start, stop, step]`` for each dimension after the channels).

Every op also names the ``layer`` of the original model it comes from. ``README.md`` shows a
30-line loader that runs this with torch alone; ``run_op`` here is the same, and
``tests/test_shrink.py`` checks that the README's copy agrees with it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as serialize
from torch import nn

from force_cli.atomic import write_atomic
from force_cli.errors import CheckpointError

FORMAT = "force-shrunk/1"
PROGRAM_FIELD = "program"
SOURCE_FIELD = "source_metadata"
KINDS = ("conv2d", "linear", "affine", "relu", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "flatten",
         "add", "cat", "pad", "slice")


def csr_weight(op: dict, t: dict[str, torch.Tensor]) -> torch.Tensor:
    with warnings.catch_warnings():  # "CSR support is in beta", "invariant checks disabled": not for users
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(t[op["crow"]], t[op["col"]], t[op["values"]], op["shape"])


def _sparse_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T with w sparse (CSR): torch.sparse.mm wants the sparse operand first."""
    return torch.sparse.mm(w, x.t()).t()


def _sparse_conv2d(x: torch.Tensor, w: torch.Tensor, op: dict) -> torch.Tensor:
    """A convolution as unfold (im2col) then one CSR matrix product over all images."""
    cols = F.unfold(x, op["kernel_size"], op["dilation"], op["padding"], op["stride"])  # (n, in*kh*kw, L)
    out = torch.sparse.mm(w, cols.transpose(0, 1).flatten(1))  # (out, n*L)
    return out.view(w.shape[0], x.shape[0], *op["output_size"]).transpose(0, 1)


def sparse_product(op: dict, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A conv2d or linear op's product (no bias) with its (out, in*kh*kw) weight ``w`` held as
    any sparse matrix layout ``torch.sparse.mm`` takes (CSR here; ``force bench`` also times BSR).
    A convolution needs ``kernel_size`` in ``op``, as ``to_csr`` records it."""
    return _sparse_conv2d(x, w, op) if op["op"] == "conv2d" else _sparse_linear(x, w)


def run_op(op: dict, args: list[torch.Tensor], t: dict[str, torch.Tensor]) -> torch.Tensor:
    """One op of a program on its input values; ``t`` holds the file's tensors by name."""
    kind, x = op["op"], args[0]
    bias = t[op["bias"]] if op.get("bias") else None
    if kind == "conv2d":
        if op.get("format") == "csr":
            y = _sparse_conv2d(x, csr_weight(op, t), op)
            y = y if bias is None else y + bias.view(1, -1, 1, 1)
        else:
            y = F.conv2d(x, t[op["weight"]], bias, op["stride"], op["padding"], op["dilation"])
    elif kind == "linear":
        if op.get("format") == "csr":
            y = _sparse_linear(x, csr_weight(op, t))
            y = y if bias is None else y + bias
        else:
            y = F.linear(x, t[op["weight"]], bias)
    elif kind == "affine":
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * t[op["scale"]].view(shape) + t[op["shift"]].view(shape)
    elif kind == "relu":
        return F.relu(x)
    elif kind == "max_pool2d":
        return F.max_pool2d(x, op["kernel_size"], op["stride"], op["padding"], op["dilation"], op["ceil_mode"])
    elif kind == "avg_pool2d":
        return F.avg_pool2d(x, op["kernel_size"], op["stride"], op["padding"], op["ceil_mode"], op["count_include_pad"])
    elif kind == "adaptive_avg_pool2d":
        return F.adaptive_avg_pool2d(x, op["output_size"])
    elif kind == "flatten":
        return torch.flatten(x, 1)
    elif kind == "add":
        return args[0] + args[1]
    elif kind == "cat":
        return torch.cat(args, 1)
    elif kind == "pad":
        return F.pad(x, op["pad"])
    elif kind == "slice":
        return x[(slice(None), slice(None), *(slice(*d) for d in op["dims"]))]
    else:
        raise ValueError(f"unknown op '{kind}'")
    return y + t[op["bias_map"]] if op.get("bias_map") else y


class ShrunkNet(nn.Module):
    """A program and its tensors as a module (``.to(device)``, ``.eval()`` work as usual).

    The forward is generated code (a ``torch.fx.GraphModule``: one call per op, no interpretation),
    so that a network of a few small layers is not dominated by Python overhead; ``run_op`` is
    the reference it is tested against. CSR weights are built once, as buffers.

    Linear layers and the ReLUs between them run feature-major: activations (features, batch),
    each layer one ``addmm(bias, W, h)``. For the narrow layers of a shrunk network this is much
    faster than ``F.linear``'s batch-major call (LeNet-300-100's shrunk 64-25-8-10 layers at batch
    256, one thread: 23.5 against 41 µs). Any other op gets the batch-major view back (``.t()``).
    """

    def __init__(self, program: dict[str, Any], tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.program = program
        self._attr = {name: f"t{i}" for i, name in enumerate(sorted(tensors))}
        root = nn.Module()
        for name, attr in self._attr.items():
            root.register_buffer(attr, tensors[name])
        for i, op in enumerate(program["ops"]):
            if op.get("format") == "csr":
                root.register_buffer(f"csr{i}", csr_weight(op, tensors))
            if op["op"] == "linear" and op.get("bias"):
                root.register_buffer(f"column_bias{i}", tensors[op["bias"]][:, None].clone())
        self.graph = torch.fx.Graph()
        self.feature_major: set[torch.fx.Node] = set()  # values held as (features, batch)
        self.readers = [0] * (len(program["ops"]) + 1)
        for op in program["ops"]:
            for j in op["in"]:
                self.readers[j] += 1
        self.readers[program["output"]] += 1
        values = [self.graph.placeholder("x")]
        for i, op in enumerate(program["ops"]):
            values.append(self._emit(i, op, [values[j] for j in op["in"]]))
        self.graph.output(self._batch_major(values[program["output"]]))
        self.net = torch.fx.GraphModule(root, self.graph)
        del self.graph, self.feature_major, self.readers
        for name, attr in self._attr.items():  # the file's tensors the code does not read as they are
            if not hasattr(self.net, attr):
                self.register_buffer(attr, tensors[name])

    def _batch_major(self, value: torch.fx.Node) -> torch.fx.Node:
        return self.graph.call_function(torch.t, (value,)) if value in self.feature_major else value

    def _emit(self, i: int, op: dict, args: list) -> torch.fx.Node:
        graph, call, kind = self.graph, self.graph.call_function, op["op"]

        def attr(key: str):
            return graph.get_attr(self._attr[op[key]]) if op.get(key) else None

        if kind == "linear":
            h = args[0] if args[0] in self.feature_major else call(torch.t, (args[0],))
            if op.get("format") == "csr":
                y = call(torch.sparse.mm, (graph.get_attr(f"csr{i}"), h))
                y = call(torch.add, (y, graph.get_attr(f"column_bias{i}"))) if op.get("bias") else y
            elif op.get("bias"):
                y = call(torch.addmm, (graph.get_attr(f"column_bias{i}"), attr("weight"), h))
            else:
                y = call(torch.mm, (attr("weight"), h))
            self.feature_major.add(y)
            return y
        if kind == "relu" and args[0] in self.feature_major:  # in place when nothing else reads the layer's output
            y = call(torch.relu_ if self.readers[op["in"][0]] == 1 else torch.relu, (args[0],))
            self.feature_major.add(y)
            return y
        args = [self._batch_major(a) for a in args]
        x = args[0]
        if kind == "conv2d" and op.get("format") == "csr":
            y = call(_sparse_conv2d, (x, graph.get_attr(f"csr{i}"), op))
            y = call(torch.add, (y, call(torch.Tensor.view, (attr("bias"), (1, -1, 1, 1))))) if op.get("bias") else y
        elif kind == "conv2d":
            y = call(F.conv2d, (x, attr("weight"), attr("bias"), op["stride"], op["padding"], op["dilation"]))
        elif kind in ("relu", "flatten", "add"):  # the commonest, called directly
            fn, extra = {"relu": (F.relu, ()), "flatten": (torch.flatten, (1,)), "add": (torch.add, ())}[kind]
            return call(fn, (*args, *extra))
        elif kind == "affine":
            return call(run_op, ({"op": "affine", "scale": "s", "shift": "h"}, [x], {"s": attr("scale"), "h": attr("shift")}))
        else:  # the other ops, which hold no tensors: the reference implementation itself
            return call(run_op, (op, args, {}))
        return call(torch.add, (y, attr("bias_map"))) if op.get("bias_map") else y

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self.net, attr) if hasattr(self.net, attr) else getattr(self, attr)
                for name, attr in self._attr.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward(x)  # the generated code itself: no hooks are ever set on the inner module


def save_shrunk(path: str | Path, program: dict[str, Any], tensors: dict[str, torch.Tensor],
                source_metadata: dict[str, Any]) -> Path:
    """Write a shrunk network atomically (the caller checked that ``path`` may be written)."""
    header = {"format": FORMAT, PROGRAM_FIELD: json.dumps(program), SOURCE_FIELD: json.dumps(source_metadata)}
    data = serialize({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=header)
    return write_atomic(Path(path), data, "shrunk network")


def is_shrunk(path: str | Path) -> bool:
    """Whether ``path`` is a shrunk network (reads the header only; False for anything else)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:
        return False


def _check_program(program: Any, names: set[str], path: Path) -> dict:
    """Refuse a program that refers to tensors or values it does not have (a corrupt file)."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"'{path}': {what}; the shrunk file is corrupt, re-create it with `force shrink`")

    if not isinstance(program, dict) or not isinstance(program.get("ops"), list):
        raise bad("its program is not a list of ops")
    for i, op in enumerate(program["ops"]):
        if not isinstance(op, dict) or op.get("op") not in KINDS:
            raise bad(f"op {i} is not one of {', '.join(KINDS)}")
        inputs = op.get("in")
        if not isinstance(inputs, list) or not inputs or not all(isinstance(v, int) and 0 <= v <= i for v in inputs):
            raise bad(f"op {i} reads values that are not computed before it")
        for key in ("weight", "bias", "bias_map", "scale", "shift", "crow", "col", "values"):
            if op.get(key) is not None and op[key] not in names:
                raise bad(f"op {i} names the tensor '{op[key]}', which the file does not hold")
    output = program.get("output")
    if not isinstance(output, int) or not 0 <= output <= len(program["ops"]):
        raise bad("its output is not one of its values")
    return program


def load_shrunk(path: str | Path) -> tuple[ShrunkNet, dict[str, Any]]:
    """The network of a shrunk file (in eval mode) and the source checkpoint's metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"'{path}' does not exist or is not a file; give a file written by `force shrink`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"'{path}' is not a shrunk network (format '{meta.get('format')}'); "
                                      "make one with `force shrink`")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        program = json.loads(meta[PROGRAM_FIELD])
        source = json.loads(meta.get(SOURCE_FIELD, "{}"))
    except CheckpointError:
        raise
    except (KeyError, json.JSONDecodeError):
        raise CheckpointError(f"'{path}': its program is missing or not JSON; re-create it with `force shrink`") from None
    except Exception as exc:
        raise CheckpointError(f"'{path}' cannot be read as safetensors ({type(exc).__name__}); "
                              "the file is corrupt or truncated, re-create it") from None
    _check_program(program, set(tensors), path)
    return ShrunkNet(program, tensors).eval(), source if isinstance(source, dict) else {}
