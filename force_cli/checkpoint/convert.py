"""The writers of `force export`'s formats (``checkpoint/export.py`` registers them): the two
variants of the force format, and the layouts other code loads.

  * ``dense`` / ``compact``: the two variants of the force format (lossless either way; training
    state of a partial checkpoint is kept);
  * ``state-dict``: a plain safetensors ``state_dict``, pruned weights zero, no mask keys, so
    ``model.load_state_dict(load_file(path), strict=True)`` works on a freshly built model;
  * ``torch-prune``: the layout of ``torch.nn.utils.prune``: each pruned ``W`` becomes ``W_orig``
    (the weight) and ``W_mask`` (the mask, in the weight's dtype), loadable with ``strict=True``
    into a model on which ``prune.custom_from_mask`` was applied to each pruned weight.
Each takes a checkpoint already validated against its model (``force_cli/export.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save as serialize

from force_cli.atomic import write_atomic
from force_cli.checkpoint.format import Checkpoint, save_checkpoint


def write_dense(ckpt: Checkpoint, output: Path) -> Path:
    return save_checkpoint(output, ckpt.state_dict, ckpt.masks, ckpt.metadata, extra=ckpt.extra)


def write_compact(ckpt: Checkpoint, output: Path) -> Path:
    return save_checkpoint(output, ckpt.state_dict, ckpt.masks, ckpt.metadata, extra=ckpt.extra, compact=True)


def plain_state_dict(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """The model's state_dict with pruned weights at zero (they are stored as zero already)."""
    zero = torch.zeros(())
    return {k: (torch.where(ckpt.masks[k], v, zero.to(v.dtype)) if k in ckpt.masks else v).contiguous()
            for k, v in ckpt.state_dict.items()}


def torch_prune_state_dict(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """``W -> W_orig, W_mask`` for every pruned weight, as torch.nn.utils.prune names them."""
    out = {}
    for key, value in plain_state_dict(ckpt).items():
        if key in ckpt.masks:
            out[key + "_orig"] = value
            out[key + "_mask"] = ckpt.masks[key].to(value.dtype).contiguous()
        else:
            out[key] = value
    return out


def write_state_dict(ckpt: Checkpoint, output: Path) -> Path:
    return _write_plain(output, plain_state_dict(ckpt), ckpt, "state-dict")


def write_torch_prune(ckpt: Checkpoint, output: Path) -> Path:
    return _write_plain(output, torch_prune_state_dict(ckpt), ckpt, "torch-prune")


def _write_plain(output: Path, tensors: dict[str, torch.Tensor], ckpt: Checkpoint, to: str) -> Path:
    """A plain safetensors file through the one atomic writer (force_cli.atomic). "format": "pt" is
    what safetensors' own torch helpers write; the model is recorded for humans."""
    header = {"format": "pt", "force_model": str(ckpt.metadata["model"]), "force_export": to}
    write_atomic(output, serialize(tensors, metadata=header), "export")
    return output
