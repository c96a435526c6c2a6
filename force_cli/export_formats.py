"""The formats `force export` writes, and the checks of an export that need no torch.

Kept apart from ``export.py`` (which converts tensors) so that ``force export --help`` lists the
formats, and a bad format, output or missing input is refused, at once, before torch is loaded.
"""

from __future__ import annotations

from pathlib import Path

from force_cli.checkpoint_files import check_existing, check_new_output
from force_cli.errors import ConfigError

#: Export format -> one line for ``force export --help``.
FORMATS = {
    "compact": "force checkpoint, compact variant (kept values + bit-packed mask or gap codes)",
    "dense": "force checkpoint, dense variant (force-ckpt/1)",
    "state-dict": "plain safetensors state_dict, pruned weights zero, no masks (load_state_dict strict=True)",
    "torch-prune": "torch.nn.utils.prune layout: W_orig + W_mask per pruned weight",
    "sparse": "the shrunk network (force shrink), each conv/linear layer dense or CSR, whichever ran faster here "
              "(measured; the dense network if that is faster as a whole); load it with the README's loader",
}


def check_export(source: Path, to: str, output: Path, overwrite: bool) -> None:
    """Refuse an unknown format, an output that may not be written, or a missing input."""
    if to not in FORMATS:
        raise ConfigError(f"unknown export format '{to}'; known formats are: {', '.join(FORMATS)}")
    check_new_output(output, overwrite)
    check_existing(source)
