"""`force export --to sparse`: the shrunk network with each conv/linear layer in whichever of dense
or CSR ran faster here, measured, and never slower than the dense network as a whole.

Each layer of the shrunk network is timed dense and as CSR on its real input (batch
``settings.batch_size``); CSR is taken where it is faster. The whole mixed network is then timed
against the dense masked network (for a shrunk file given as the source: against that shrunk
network); if it is not faster, the dense network is written instead, as a program with every
channel kept. The file is a ``force-shrunk/1`` file (``program.py``): the README's loader runs it.
The choices and their times are recorded in its metadata (``sparse_choices``) with the device and
threads they were measured on: another machine may choose otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from force_cli.checkpoint import check_new_output
from force_cli.checkpoint.paths import same_file
from force_cli.errors import ConfigError
from force_cli.restore import input_shape, load_for_model, model_from_checkpoint
from force_cli.shrink.bench import BenchSettings, Progress, median_seconds, program_inputs
from force_cli.shrink.program import ShrunkNet, is_shrunk, load_shrunk, run_op, save_shrunk
from force_cli.shrink.rewrite import Shrunk, shrink_model
from force_cli.shrink.sparse import mixing_indices, to_csr


def choose_formats(shrunk: Shrunk, input_shape: tuple[int, ...], settings: BenchSettings,
                   progress: Progress | None = None) -> tuple[list[int], list[dict]]:
    """Indices of the ops CSR runs faster, and the measured times of every conv/linear op."""
    device = settings.device
    tensors = {k: v.to(device) for k, v in shrunk.tensors.items()}
    indices = mixing_indices(shrunk.program)
    sparse_program, sparse_tensors = to_csr(shrunk.program, tensors, indices)
    x = torch.randn(settings.batch_size, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    inputs = program_inputs(shrunk.program, tensors, x)
    chosen, record = [], []
    for n, i in enumerate(indices, 1):
        op, sop = shrunk.program["ops"][i], sparse_program["ops"][i]
        if progress:
            progress(f"layer {op['layer']}", n, len(indices))
        dense_s = median_seconds(lambda: run_op(op, inputs[i], tensors), settings)
        csr_s = median_seconds(lambda: run_op(sop, inputs[i], sparse_tensors), settings)
        if csr_s < dense_s:
            chosen.append(i)
        record.append({"layer": op["layer"], "dense_s": dense_s, "csr_s": csr_s,
                       "format": "csr" if csr_s < dense_s else "dense"})
    return chosen, record


def export_sparse(source: str | Path, output: str | Path, settings: BenchSettings, *,
                  overwrite: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    output = Path(output)
    check_new_output(output, overwrite)
    if same_file(source, output):
        raise ConfigError(f"the output '{output}' is the input; choose another -o path")
    device = settings.device
    if is_shrunk(source):
        net, metadata = load_shrunk(source)
        shrunk = Shrunk(net.program, net.tensors())
        shape = tuple(net.program["input_shape"])
        baseline, fallback = net, shrunk
    else:
        ckpt = load_for_model(source)
        metadata = ckpt.metadata
        model = model_from_checkpoint(ckpt)
        shape = input_shape(metadata)
        shrunk = shrink_model(model, ckpt.masks, shape)
        baseline, fallback = model, None
    chosen, record = choose_formats(shrunk, shape, settings, progress)
    program, tensors = to_csr(shrunk.program, shrunk.tensors, chosen)
    x = torch.randn(settings.batch_size, *shape, generator=torch.Generator().manual_seed(1)).to(device)
    mixed = ShrunkNet(program, tensors).to(device).eval()
    baseline = baseline.to(device).eval()
    mixed_s = median_seconds(lambda: mixed(x), settings)
    dense_s = median_seconds(lambda: baseline(x), settings)
    kept = "shrunk+csr" if chosen else "shrunk"
    if mixed_s >= dense_s:  # never slower than the baseline: write the baseline itself
        dense = fallback or shrink_model(model, ckpt.masks, shape, remove=False)
        program, tensors, kept = dense.program, dense.tensors, "shrunk" if fallback else "dense"
    choices = {"device": str(device), "threads": torch.get_num_threads(), "batch_size": settings.batch_size,
               "written": kept, "network_s": mixed_s, "dense_network_s": dense_s, "layers": record}
    save_shrunk(output, program, {k: v.cpu() for k, v in tensors.items()},
                metadata | {"sparse_choices": choices})
    return {"path": str(output), **choices}
