"""`force eval`: top-1 and top-5 accuracy, loss, samples and density of a checkpoint on a split.

The library (``evaluation.evaluate_checkpoint``) evaluates; this module shows progress and prints
a table or one JSON document.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from force_cli.checkpoint.paths import check_existing
from force_cli.cli.console import progress_bar, stdout, warn
from force_cli.cli.options import CheckpointArg, DeviceOpt, JsonOpt, QuietOpt, ThreadsOpt, TrustOpt, honours_trust
from force_cli.cli.status import run_wrapper
from force_cli.data.names import SPLITS
from force_cli.safe_text import literal
from force_cli.threads import apply_threads

EPILOG = ("Examples:\n\n"
          "  force eval lenet-trained.safetensors\n\n"
          "  force eval lenet-trained.safetensors --split val --json | jq .top1")

BATCH_SIZE = 256  # evaluation needs no gradients, so it can take larger batches than training
WORKERS = 0


@run_wrapper
@honours_trust
def evaluate(
    checkpoint: CheckpointArg,
    split: Annotated[str, typer.Option("--split", help=f"Which split (default: {SPLITS[0]}): {', '.join(SPLITS)} (val: the part held out during training).", show_default=False)] = SPLITS[0],
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Evaluate on another dataset with the same classes and image shape (default: the checkpoint's).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help=f"Evaluation mini-batch size (default: {BATCH_SIZE}).", show_default=False)] = BATCH_SIZE,
    workers: Annotated[int, typer.Option("--workers", help=f"Data-loading worker processes (default: {WORKERS}).", show_default=False)] = WORKERS,
    device: DeviceOpt = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Dataset root (default: the checkpoint's, $FORCE_DATA or the user cache).")] = None,
    download: Annotated[bool, typer.Option("--download/--no-download", metavar="", help="Download a missing dataset (default: --download).", show_default=False)] = True,
    json_output: JsonOpt = False,
    trust_model_code: TrustOpt = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Top-1 and top-5 accuracy, loss, samples and density of a checkpoint on a dataset split."""
    check_existing(checkpoint)
    apply_threads(threads)
    # torch-free start-up: the library loads torch, so it is imported once the file is known to be there
    from force_cli import distributed
    from force_cli.evaluation import evaluate_checkpoint
    from force_cli.report import json_document

    main_rank = distributed.is_main()  # under torchrun only rank 0 shows progress and prints the result
    with progress_bar(quiet or not main_rank) as bar:
        task = None

        def on_start(samples: int):
            nonlocal task
            task = bar.add_task(f"evaluating ({split})", total=samples, status="")

        report = evaluate_checkpoint(
            checkpoint, split=split, dataset=dataset, data_dir=data_dir, download=download,
            device=device or "auto", batch_size=batch_size, workers=workers, on_start=on_start,
            on_batch=lambda done: bar.update(task, completed=done), on_warning=warn if main_rank else None,
        )
    if not main_rank:
        return
    if json_output:
        print(json_document(report))
        return
    table = Table(title=literal(f"{report['checkpoint']}: {report['model']} on {report['dataset']} ({report['split']})"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("top-1 accuracy", f"{report['top1']:.2%}")
    table.add_row(f"top-{report['top5_k']} accuracy", f"{report['top5']:.2%}")
    table.add_row("loss", f"{report['loss']:.4f}")
    table.add_row("samples", f"{report['samples']:,}")
    table.add_row("density", f"{report['density']:.4%}")
    stdout.print(table)

