"""`force inspect` as a library call: a checkpoint in, its per-layer density report out.

The report is ``report.summary``'s JSON-able dict (metadata, per-layer and total density and
effective density) plus ``warnings``: what the checkpoint's reader found odd but usable. Building
the model is needed for the effective density (which kept weights lie on an input-to-output path).
A shrunk network (`force shrink`) has no masks: ``inspect_shrunk`` reports its widths instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from force_cli.checkpoint import load_checkpoint
from force_cli.report import effective_masks, summary
from force_cli.restore import input_shape, model_from_checkpoint
from force_cli.shrink import FORMAT, load_shrunk
from force_cli.shrink.summary import layer_rows, totals


def inspect_checkpoint(path: str | Path) -> dict[str, Any]:
    """The density report of the checkpoint at ``path``, with its ``warnings``."""
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt)
    effective = effective_masks(model, ckpt.masks, input_shape(ckpt.metadata))
    return summary(ckpt.masks, effective, ckpt.metadata, str(path)) | {"warnings": ckpt.warnings}


def inspect_shrunk(path: str | Path) -> dict[str, Any]:
    """A shrunk network (`force shrink`): its width per layer and the source's metadata."""
    net, metadata = load_shrunk(path)
    rows = layer_rows(net.program, net.tensors())
    return {"path": str(path), "format": FORMAT, "metadata": metadata, "layers": rows, "totals": totals(rows)}
