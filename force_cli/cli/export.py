"""`force export`: a checkpoint into the other variant of the format, or into what other code loads.

The format, the output and the input are checked before torch is loaded
(``checkpoint.export.check_export``); the library (``export.export_checkpoint``) converts, and
``shrink.export.export_sparse`` writes the measured shrunk/CSR mix of ``--to sparse``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from force_cli.cli.console import plain_line, progress_bar
from force_cli.cli.options import (CheckpointArg, DeviceOpt, OverwriteOpt, QuietOpt, ThreadsOpt, TrustOpt,
                                   honours_trust, one_of, path, positive)
from force_cli.cli.status import run_wrapper
from force_cli.checkpoint.export import FORMATS, check_export
from force_cli.locking import hold_output
from force_cli.threads import apply_threads

EPILOG = ("Formats:\n\n" + "\n\n".join(f"  {name}: {fmt.summary}" for name, fmt in FORMATS.items())
          + "\n\nExamples:\n\n"
          "  force export lenet.safetensors --to compact -o lenet-compact.safetensors\n\n"
          "  force export lenet-trained.safetensors --to state-dict -o lenet-weights.safetensors\n\n"
          "  force export lenet-trained.safetensors --to sparse --batch-size 256 --threads 1 -o lenet-fast.safetensors")


@run_wrapper
@honours_trust
def export(
    checkpoint: CheckpointArg,
    to: Annotated[str, typer.Option("--to", help=f"Format to write: {one_of(FORMATS)} (below).")],
    output: Annotated[Path, typer.Option("--output", "-o", parser=path, metavar="<path>", help="File to write (required).")],
    overwrite: OverwriteOpt = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="sparse: the batch each layer is timed at (default: 256).", show_default=False)] = 256,
    repeats: Annotated[int, typer.Option("--repeats", help="sparse: timed runs per measurement (default: 20).", show_default=False)] = 20,
    device: DeviceOpt = None,
    trust_model_code: TrustOpt = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Convert a checkpoint: compact <-> dense (lossless), plain state_dict, torch.nn.utils.prune layout, or the fastest measured shrunk/CSR mix (sparse); print the path."""
    with hold_output(output):
        check_export(checkpoint, to, output, overwrite)
        if to == "sparse":
            written = _export_sparse(checkpoint, output, overwrite, positive("--batch-size", batch_size),
                                     positive("--repeats", repeats), device, quiet, threads)
        else:
            apply_threads(threads)
            # torch-free start-up: the library loads torch, so it is imported once the input is known good
            from force_cli.export import export_checkpoint

            written = export_checkpoint(checkpoint, to, output, overwrite=overwrite)
    print(written)


def _export_sparse(checkpoint: Path, output: Path, overwrite: bool, batch_size: int, repeats: int,
                   device: str | None, quiet: bool, threads: int | None) -> str:
    """Time each layer dense and as CSR, write the faster mix, and say on stderr what was chosen."""
    apply_threads(threads)
    # torch-free start-up: the library loads torch, so it is imported once the input is known good
    from force_cli.device import resolve_device
    from force_cli.shrink.bench import BenchSettings
    from force_cli.shrink.export import export_sparse

    settings = BenchSettings(batch_size=batch_size, repeats=repeats, device=resolve_device(device or "auto"))
    with progress_bar(quiet) as bar:
        task = bar.add_task("timing layers", total=None, status="")
        report = export_sparse(checkpoint, output, settings, overwrite=overwrite,
                               progress=lambda what, done, total: bar.update(task, completed=done, total=total,
                                                                             status=what))
    csr = [r["layer"] for r in report["layers"] if r["format"] == "csr"]
    plain_line(f"wrote the {report['written']} network ({len(csr)} CSR layers: {', '.join(csr) or 'none'}); "
               f"{report['network_s'] * 1e3:.3f} ms against {report['dense_network_s'] * 1e3:.3f} ms dense "
               f"at batch {report['batch_size']} on {report['device']}")
    return report["path"]
