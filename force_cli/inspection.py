"""`force inspect` as a library call: a checkpoint in, its per-layer density report out.

The report is ``report.summary``'s JSON-able dict (metadata, per-layer and total density and
effective density) plus ``warnings``: what the checkpoint's reader found odd but usable. Building
the model is needed for the effective density (which kept weights lie on an input-to-output path).
A shrunk network (`force shrink`) has no masks: ``inspect_shrunk`` reports its widths instead.

The reachability pass runs at the input size the metadata claims, which a conv net's weights do
not bound, so its activations are counted first on the meta device (``connectivity.reachability_size``)
and the effective density is left out, with a warning, beyond ``connectivity.REACHABILITY_BUDGET``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from force_cli.pruning import connectivity
from force_cli.pruning.connectivity import effective_masks, reachability_size
from force_cli.report import summary
from force_cli.restore import input_shape, load_for_model, model_from_checkpoint
from force_cli.shrink import FORMAT, load_shrunk
from force_cli.shrink.summary import layer_rows, totals


def inspect_checkpoint(path: str | Path) -> dict[str, Any]:
    """The density report of the checkpoint at ``path``, with its ``warnings``; the effective
    counts are None (and one more warning says why) when the reachability pass would hold more
    than ``connectivity.REACHABILITY_BUDGET`` activations."""
    ckpt = load_for_model(path)  # every declared shape compared with the model before any allocation
    model = model_from_checkpoint(ckpt)
    shape = input_shape(ckpt.metadata)
    warnings = list(ckpt.warnings)
    size = reachability_size(model, shape)
    if size is not None and size > connectivity.REACHABILITY_BUDGET:
        warnings.append(f"effective density not computed: its reachability pass at the {'x'.join(map(str, shape))} "
                        f"inputs that the metadata claims would hold {size / 1e6:.0f} M activations (more than the "
                        f"{connectivity.REACHABILITY_BUDGET / 1e6:.0f} M allowed); the other columns are exact")
        effective = None
    else:
        effective = effective_masks(model, ckpt.masks, shape)
    return summary(ckpt.masks, effective, ckpt.metadata, str(path)) | {"warnings": warnings}


def inspect_shrunk(path: str | Path) -> dict[str, Any]:
    """A shrunk network (`force shrink`): its width per layer and the source's metadata."""
    net, metadata = load_shrunk(path)
    rows = layer_rows(net.program, net.tensors())
    return {"path": str(path), "format": FORMAT, "metadata": metadata, "layers": rows, "totals": totals(rows)}
