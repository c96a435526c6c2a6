"""`force export`: a checkpoint into the other variant of the format, or into what other code loads.

The format, the output and the input are checked before torch is loaded
(``export_formats.check_export``); the library (``export.export_checkpoint``) converts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from force_cli.atomic import remove_stale
from force_cli.cli.options import CheckpointArg, OverwriteOpt, one_of, path
from force_cli.cli.status import run_wrapper
from force_cli.export_formats import FORMATS, check_export
from force_cli.locking import hold

EPILOG = ("Formats:\n\n" + "\n\n".join(f"  {name}: {what}" for name, what in FORMATS.items())
          + "\n\nExamples:\n\n"
          "  force export lenet.safetensors --to compact -o lenet-compact.safetensors\n\n"
          "  force export lenet-trained.safetensors --to state-dict -o lenet-weights.safetensors")


@run_wrapper
def export(
    checkpoint: CheckpointArg,
    to: Annotated[str, typer.Option("--to", help=f"Format to write: {one_of(FORMATS)} (below).")],
    output: Annotated[Path, typer.Option("--output", "-o", parser=path, metavar="<path>", help="File to write (required).")],
    overwrite: OverwriteOpt = False,
):
    """Convert a checkpoint: compact <-> dense (lossless), or a plain state_dict / torch.nn.utils.prune layout; print the path."""
    with hold((output, "output")):
        remove_stale(output)
        check_export(checkpoint, to, output, overwrite)
        # torch-free start-up: the library loads torch, so it is imported once the input is known good
        from force_cli.export import export_checkpoint

        written = export_checkpoint(checkpoint, to, output, overwrite=overwrite)
    print(written)
