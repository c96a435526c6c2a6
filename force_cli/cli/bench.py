"""`force bench`: inference time of a checkpoint's dense masked network, its shrunk network and
CSR kernels, whole and per layer.

The input and the counts are checked before torch is loaded; the library shrinks
(``shrink.rewrite.shrink_model``) and times (``shrink.bench.bench_models``); this module shows
progress and prints a table (``shrink_report.render_bench``) or one JSON document.
"""

from __future__ import annotations

from typing import Annotated

import typer

from force_cli.checkpoint.paths import check_existing
from force_cli.cli.console import progress_bar, stdout, warn
from force_cli.cli.options import (CheckpointArg, DeviceOpt, JsonOpt, QuietOpt, ThreadsOpt, TrustOpt, honours_trust,
                                   positive)
from force_cli.cli.status import run_wrapper
from force_cli.errors import ForceError
from force_cli.threads import apply_threads

EPILOG = ("Networks: dense (the checkpoint's model, pruned weights zero), shrunk (force shrink's) and csr (the "
          "shrunk network with every conv/linear layer as a torch.sparse CSR matrix); per layer also BSR, where a block "
          "side of 4 or 2 divides the layer's matrix. On the CPU with onnx and onnxruntime installed "
          "(pip install 'force-cli\\[onnx]'), also onnxruntime (the shrunk network exported to ONNX in memory). "
          "Times are medians after warm-up; "
          "on the CPU they use --threads (pin it, e.g. --threads 1, for stable figures).\n\n"
          "Examples:\n\n"
          "  force bench lenet.safetensors --batch-size 256 --threads 1\n\n"
          "  force bench vgg19.safetensors --no-layers --json | jq .speedup")


@run_wrapper
@honours_trust
def bench(
    checkpoint: CheckpointArg,
    batch_size: Annotated[int, typer.Option("--batch-size", help="The batch measured besides batch 1 (default: 256).", show_default=False)] = 256,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per measurement; the median is shown (default: 20).", show_default=False)] = 20,
    layers: Annotated[bool, typer.Option("--layers/--no-layers", metavar="", help="Also time each conv/linear layer and find its break-even density (default: --layers).", show_default=False)] = True,
    device: DeviceOpt = None,
    json_output: JsonOpt = False,
    trust_model_code: TrustOpt = False,
    quiet: QuietOpt = False,
    threads: ThreadsOpt = None,
):
    """Inference time of the dense masked network, the shrunk network and CSR kernels, whole and per layer."""
    batch_size, repeats = positive("--batch-size", batch_size), positive("--repeats", repeats)
    check_existing(checkpoint)
    apply_threads(threads)
    # torch-free start-up: the library loads torch, so it is imported once the input is known good
    from force_cli.device import resolve_device
    from force_cli.report import json_document
    from force_cli.restore import input_shape, load_for_model, model_from_checkpoint
    from force_cli.shrink import is_shrunk
    from force_cli.shrink.bench import BenchSettings, bench_models
    from force_cli.shrink.rewrite import shrink_model
    from force_cli.shrink_report import render_bench

    if is_shrunk(checkpoint):
        raise ForceError(f"'{checkpoint}' is a shrunk network; bench the checkpoint it was made from "
                         "(the benchmark compares against the dense masked network)")
    settings = BenchSettings(batch_size=batch_size, repeats=repeats, device=resolve_device(device or "auto"),
                             layers=layers)
    ckpt = load_for_model(checkpoint)
    for message in ckpt.warnings:
        warn(message)
    model = model_from_checkpoint(ckpt)
    shape = input_shape(ckpt.metadata)
    with progress_bar(quiet) as bar:
        task = bar.add_task("shrinking", total=None, status="")
        shrunk = shrink_model(model, ckpt.masks, shape)

        def progress(what: str, done: int, total: int):
            bar.update(task, description="benchmarking", completed=done, total=total, status=what)

        report = bench_models(model, shrunk, shape, settings, progress)
    report = {"checkpoint": str(checkpoint), "model": ckpt.metadata["model"], **report}
    if json_output:
        print(json_document(report))
    else:
        render_bench(report, stdout, f"{checkpoint}")
