"""Conv and linear layers of a program as CSR matrices (``torch.sparse``), and the measured choice
between CSR and dense per layer that ``force export --to sparse`` writes.

A layer in the ``csr`` format keeps its (out, in*kh*kw) weight as ``crow``/``col``/``values``
(safetensors holds dense tensors only) and runs as ``torch.sparse.mm``: a linear layer directly, a
convolution after an unfold (im2col). PyTorch has no sparse convolution kernel, and the unfold
costs about what the dense convolution does, so CSR pays off mainly for linear layers.
"""

from __future__ import annotations

import copy
import warnings

import torch

from force_cli.shrink.graph import MIXING


def to_csr(program: dict, tensors: dict[str, torch.Tensor], indices) -> tuple[dict, dict[str, torch.Tensor]]:
    """A copy of the program with the conv/linear ops at ``indices`` stored as CSR matrices."""
    program, tensors = copy.deepcopy(program), dict(tensors)
    for i in indices:
        op = program["ops"][i]
        if op["op"] not in MIXING or op.get("format") == "csr":
            continue
        weight = tensors.pop(op.pop("weight"))
        with warnings.catch_warnings():  # "CSR support is in beta": not for users
            warnings.simplefilter("ignore", UserWarning)
            matrix = weight.reshape(weight.shape[0], -1).to_sparse_csr()
        base = op["layer"]
        for key, value in (("crow", matrix.crow_indices()), ("col", matrix.col_indices()), ("values", matrix.values())):
            name = f"{base}.{key}"
            while name in tensors:
                name += "'"
            tensors[name] = value.contiguous()
            op[key] = name
        op.update({"format": "csr", "shape": list(matrix.shape), "dense_shape": list(weight.shape)})
        if op["op"] == "conv2d":
            op["kernel_size"] = list(weight.shape[2:])
    return program, tensors


def mixing_indices(program: dict) -> list[int]:
    return [i for i, op in enumerate(program["ops"]) if op["op"] in MIXING]
