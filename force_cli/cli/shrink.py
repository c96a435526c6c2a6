"""`force shrink`: the smallest dense network computing exactly what a checkpoint's masked one does.

The output and the input are checked before torch is loaded; the library
(``shrink.job.shrink_checkpoint``) rewrites the network and writes the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from force_cli.checkpoint.paths import check_existing, check_new_output, shrunk_output
from force_cli.cli.console import plain_line
from force_cli.cli.options import CheckpointArg, JsonOpt, OverwriteOpt, ThreadsOpt, TrustOpt, honours_trust, path
from force_cli.cli.status import run_wrapper
from force_cli.locking import hold_output
from force_cli.threads import apply_threads

EPILOG = ("The output computes exactly what the masked network computes (eval mode), with the units and "
          "channels no input-to-output path uses removed. It is one safetensors file: a program (JSON) over plain "
          "tensors, never pickled; README.md ('Does sparsity make it faster?') shows a short loader that needs only "
          "torch and safetensors. `force eval` and `force inspect` take it.\n\n"
          "Examples:\n\n"
          "  force shrink lenet.safetensors -o lenet-shrunk.safetensors\n\n"
          "  force inspect lenet-shrunk.safetensors")


@run_wrapper
@honours_trust
def shrink(
    checkpoint: CheckpointArg,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", parser=path, metavar="<path>", help="File to write (default: CHECKPOINT's name with -shrunk).")] = None,
    overwrite: OverwriteOpt = False,
    json_output: JsonOpt = False,
    trust_model_code: TrustOpt = False,
    threads: ThreadsOpt = None,
):
    """Write the smallest dense network computing exactly what the checkpoint's masked network computes; print its path."""
    output = output if output is not None else shrunk_output(checkpoint)
    with hold_output(output):
        check_new_output(output, overwrite)
        check_existing(checkpoint)
        apply_threads(threads)
        # torch-free start-up: the library loads torch, so it is imported once the input is known good
        from force_cli.report import json_document
        from force_cli.shrink.job import shrink_checkpoint

        report = shrink_checkpoint(checkpoint, output, overwrite=overwrite)
    t = report["totals"]
    if json_output:
        print(json_document(report))
        return
    widths = ", ".join(f"{r['layer']} {r['width'][0]}→{r['width'][1]}" for r in report["layers"])
    plain_line(f"{widths}; multiply-accumulates per sample {t['dense_macs']:,} → {t['shrunk_macs']:,} "
               f"({t['macs_ratio']:.1f}x fewer)")
    print(report["path"])
