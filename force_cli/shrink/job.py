"""`force shrink` as a library call: checkpoint in, shrunk network file out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from force_cli.checkpoint import check_new_output
from force_cli.checkpoint.paths import same_file
from force_cli.errors import ConfigError
from force_cli.restore import input_shape, load_for_model, model_from_checkpoint
from force_cli.shrink.program import save_shrunk
from force_cli.shrink.rewrite import Shrunk, shrink_model
from force_cli.shrink.summary import layer_rows, totals


def shrink_file(source: str | Path) -> tuple[Shrunk, dict[str, Any]]:
    """The shrunk program of a checkpoint, and the checkpoint's metadata."""
    ckpt = load_for_model(source)
    model = model_from_checkpoint(ckpt)
    return shrink_model(model, ckpt.masks, input_shape(ckpt.metadata)), ckpt.metadata


def shrink_checkpoint(source: str | Path, output: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write the shrunk network of ``source`` to ``output``; return its per-layer report."""
    output = Path(output)
    check_new_output(output, overwrite)
    if same_file(source, output):
        raise ConfigError(f"the output '{output}' is the input checkpoint; choose another -o path")
    shrunk, metadata = shrink_file(source)
    save_shrunk(output, shrunk.program, shrunk.tensors, metadata)
    rows = layer_rows(shrunk.program, shrunk.tensors)
    return {"path": str(output), "source": str(source), "layers": rows, "totals": totals(rows)}
