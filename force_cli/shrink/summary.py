"""Per-layer widths and costs of a shrunk program, against the masked network it came from.

Costs are multiply-accumulates per input sample (MACs) of the conv and linear layers, which hold
nearly all of a network's arithmetic: ``dense`` what the masked network runs (zeros included),
``kept`` its non-zero weights (what an ideal sparse kernel would run), ``shrunk`` the shrunk
network's dense layers.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def _weight_shape(op: dict, tensors: dict[str, torch.Tensor]) -> list[int]:
    """The shrunk dense weight's shape (a CSR op records it as ``dense_shape``)."""
    if op.get("format") == "csr":
        return list(op["dense_shape"])
    return list(tensors[op["weight"]].shape)


def _stored_weights(op: dict, tensors: dict[str, torch.Tensor]) -> int:
    return int(tensors[op["values"]].numel()) if op.get("format") == "csr" else math.prod(_weight_shape(op, tensors))


def layer_rows(program: dict[str, Any], tensors: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    rows = []
    for op in program["ops"]:
        if op["op"] not in ("conv2d", "linear"):
            continue
        original, shape = op["original"], _weight_shape(op, tensors)
        positions = op.get("positions", 1)
        rows.append({
            "layer": op["layer"],
            "kind": op["op"],
            "original_shape": original,
            "shrunk_shape": shape,
            "width": [original[0], shape[0]],
            "kept_weights": op["kept_weights"],
            "format": op.get("format", "dense"),
            "dense_macs": math.prod(original) * positions,
            "kept_macs": op["kept_weights"] * positions,
            "shrunk_macs": _stored_weights(op, tensors) * positions,
        })
    return rows


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = {key: sum(r[key] for r in rows) for key in ("dense_macs", "kept_macs", "shrunk_macs", "kept_weights")}
    out["dense_weights"] = sum(math.prod(r["original_shape"]) for r in rows)
    out["shrunk_weights"] = sum(math.prod(r["shrunk_shape"]) for r in rows)
    out["macs_ratio"] = out["dense_macs"] / out["shrunk_macs"] if out["shrunk_macs"] else math.inf
    return out
