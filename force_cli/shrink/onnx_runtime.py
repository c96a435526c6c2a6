"""The shrunk network under onnxruntime, for `force bench`, when onnx and onnxruntime are installed.

An optional measurement (``pip install 'force-cli[onnx]'``): the shrunk network is exported to ONNX
in memory by torch's TorchScript exporter (``dynamo=False``: the dynamo exporter needs onnxscript
too; a dynamic batch axis, so one export serves every batch size) and run by onnxruntime's CPU
provider with as many threads as torch uses. Nothing is written to disk, and force's own files stay
safetensors (README: why not ONNX). Where either package is missing, the device is not the CPU, or
the export fails, ``onnx_runner`` says why instead, and bench leaves the network out.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings
from collections.abc import Callable

import torch
from torch import nn

from force_cli.safe_text import first_line

Runner = Callable[[torch.Tensor], torch.Tensor]


def missing_packages() -> list[str]:
    """The packages of the ``onnx`` extra that are not installed."""
    return [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]


def versions() -> dict[str, str]:
    """The installed onnx and onnxruntime versions (call only when ``missing_packages()`` is empty)."""
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def onnx_runner(net: nn.Module, example: torch.Tensor, threads: int) -> tuple[Runner | None, int, str | None]:
    """(run, bytes of the ONNX model, None), or (None, 0, why not) when it cannot run here.
    ``run(x)`` takes and returns CPU tensors; ``example`` is one input of the right shape."""
    missing = missing_packages()
    if missing:
        return None, 0, f"{' and '.join(missing)} not installed (pip install 'force-cli[onnx]')"
    if example.device.type != "cpu":
        return None, 0, "measured on the CPU only (onnxruntime's CPU provider)"
    import onnxruntime

    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(net.eval(), (example,), buffer, dynamo=False, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = max(1, threads)
        options.log_severity_level = 3  # errors only: no optimiser notes on stderr
        session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # an exporter or runtime that does not take this network: say so, measure the rest
        first = first_line(exc)
        return None, 0, f"the export to ONNX failed ({first[:200]})"

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])

    return run, len(buffer.getvalue()), None
