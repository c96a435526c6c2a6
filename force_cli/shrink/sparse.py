"""Conv and linear layers of a program as CSR matrices (``torch.sparse``), and the measured choice
between CSR and dense per layer that ``force export --to sparse`` writes.

A layer in the ``csr`` format keeps its (out, in*kh*kw) weight as ``crow``/``col``/``values``
(safetensors holds dense tensors only) and runs as ``torch.sparse.mm``: a linear layer directly, a
convolution after an unfold (im2col). PyTorch has no sparse convolution kernel, and the unfold
costs about what the dense convolution does, so CSR pays off mainly for linear layers.

``to_bsr`` gives the same matrix in BSR (block sparse rows), which ``force bench`` times per layer
beside CSR. BSR stores a block whole once any of its weights is kept, which suits masks with block
structure; pruning at initialization gives none, so the files hold CSR only.
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


#: Block sides tried, largest first, for a layer's BSR (block sparse rows) timing in ``force bench``.
BSR_BLOCKS = (4, 2)


def bsr_block(rows: int, cols: int) -> int | None:
    """The largest block side of ``BSR_BLOCKS`` that divides both sides of a weight matrix (None:
    none does; torch's BSR layout needs whole blocks)."""
    return next((b for b in BSR_BLOCKS if rows % b == 0 and cols % b == 0), None)


def to_bsr(weight: torch.Tensor) -> torch.Tensor | None:
    """A conv/linear weight as a BSR matrix of shape (out, in*kh*kw), square blocks of
    ``bsr_block``'s side; None where no block side fits. A block is stored whole once any of its
    weights is kept, so unstructured masks keep more values than in CSR."""
    matrix = weight.reshape(weight.shape[0], -1)
    side = bsr_block(*matrix.shape)
    if side is None:
        return None
    with warnings.catch_warnings():  # "BSR support is in beta": not for users
        warnings.simplefilter("ignore", UserWarning)
        return matrix.to_sparse_bsr((side, side))


def mixing_indices(program: dict) -> list[int]:
    return [i for i, op in enumerate(program["ops"]) if op["op"] in MIXING]
