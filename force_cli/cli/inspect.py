"""`force inspect`: a checkpoint's per-layer density and effective density, with its metadata.

The report comes from the library (``inspection.inspect_checkpoint``, or ``inspect_shrunk`` for a
shrunk network: its widths instead of densities); this module prints it as a table or one JSON
document.
"""

from __future__ import annotations

from force_cli.checkpoint.paths import check_existing
from force_cli.cli.console import stdout, warn
from force_cli.cli.options import CheckpointArg, JsonOpt, ThreadsOpt, TrustOpt, honours_trust
from force_cli.cli.status import run_wrapper
from force_cli.threads import apply_threads

EPILOG = ("Examples:\n\n"
          "  force inspect lenet.safetensors\n\n"
          "  force inspect lenet.safetensors --json | jq .totals.effective_density")


@run_wrapper
@honours_trust
def inspect(
    checkpoint: CheckpointArg,
    json_output: JsonOpt = False,
    trust_model_code: TrustOpt = False,
    threads: ThreadsOpt = None,
):
    """Per-layer density and effective density of a checkpoint, with its metadata."""
    check_existing(checkpoint)
    apply_threads(threads)
    # torch-free start-up: the library loads torch, so it is imported once the file is known to be there
    from force_cli.inspection import inspect_checkpoint, inspect_shrunk
    from force_cli.report import json_document, render
    from force_cli.shrink import is_shrunk
    from force_cli.shrink_report import render_layers

    if is_shrunk(checkpoint):  # a shrunk network: its widths instead of densities
        report = inspect_shrunk(checkpoint)
        if json_output:
            print(json_document(report))
        else:
            render_layers(report, stdout, f"{checkpoint} (shrunk from {report['metadata'].get('model')})")
        return
    report = inspect_checkpoint(checkpoint)
    for message in report["warnings"]:
        warn(message)
    if json_output:
        print(json_document(report))
    else:
        render(report, stdout)
