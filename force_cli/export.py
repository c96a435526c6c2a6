"""`force export`: a force checkpoint into the other variant, or into what other code loads.

  * ``dense`` / ``compact``: the two variants of the force format (lossless either way);
  * ``state-dict``: a plain safetensors ``state_dict``, pruned weights zero, no mask keys, so
    ``model.load_state_dict(load_file(path), strict=True)`` works on a freshly built model;
  * ``torch-prune``: the layout of ``torch.nn.utils.prune``: each pruned ``W`` becomes ``W_orig``
    (the weight) and ``W_mask`` (the mask, in the weight's dtype), loadable with ``strict=True``
    into a model on which ``prune.custom_from_mask`` was applied to each pruned weight.
Only the model's own tensors are exported to the last two; training state (of a partial
checkpoint) is kept by ``dense`` and ``compact`` only.

The source is validated exactly as `train`, `eval` and `inspect` validate it (every shape against
its model built on the meta device, the masks, the model arguments), so a file they refuse is not
exported either; a model that is an import path is rebuilt only under ``trusted_model_code()``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save as serialize

from force_cli.atomic import write_atomic
from force_cli.checkpoint import Checkpoint, save_checkpoint
from force_cli.errors import ConfigError
from force_cli.export_formats import FORMATS, check_export  # noqa: F401 - FORMATS re-exported
from force_cli.restore import check_shapes, input_shape, load_for_model
from force_cli.shrink.program import is_shrunk  # the shrunk file format only (checkpoint layer)


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


def export_checkpoint(source: str | Path, to: str, output: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``source`` in format ``to`` to ``output`` (atomically); return ``output``.

    The input is validated as every other reader validates it (declared shapes, masks, model
    arguments), so that export never writes what `inspect`, `train` or `evaluate` would refuse.
    The caller locks the output (the command line holds it while this runs)."""
    if to == "sparse":  # it times the network: force_cli.shrink.export, a layer above this one
        raise ConfigError("the sparse export is measured; call force_cli.shrink.export.export_sparse")
    output = Path(output)
    check_export(Path(source), to, output, overwrite)
    if is_shrunk(source):
        raise ConfigError(f"'{source}' is a shrunk network, which has no masks to export as '{to}'; export the "
                          "checkpoint it was made from, or use --to sparse")
    ckpt = load_for_model(source)
    check_shapes(ckpt)  # the masks too, as model_from_checkpoint checks them for the other commands
    input_shape(ckpt.metadata)  # the model arguments against the dataset, as inspect checks them
    if _same_file(Path(source), output):
        raise ConfigError(f"the output '{output}' is the input checkpoint; choose another -o path")
    if to in ("dense", "compact"):
        return save_checkpoint(output, ckpt.state_dict, ckpt.masks, ckpt.metadata, extra=ckpt.extra,
                               compact=to == "compact")
    tensors = plain_state_dict(ckpt) if to == "state-dict" else torch_prune_state_dict(ckpt)
    # "format": "pt" is what safetensors' own torch helpers write; the model is recorded for humans
    header = {"format": "pt", "force_model": str(ckpt.metadata["model"]), "force_export": to}
    _write_atomic(output, tensors, header)
    return output


def _same_file(a: Path, b: Path) -> bool:
    try:
        return b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor], header: dict[str, str]) -> None:
    """A plain safetensors file through the one atomic writer (force_cli.atomic)."""
    write_atomic(path, serialize(tensors, metadata=header), "export")
