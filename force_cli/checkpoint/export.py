"""The registry of formats `force export` writes, and the checks of an export that need no torch.

Adding a format is one ``ExportFormat`` here and its writer (``writer(checkpoint, output) ->
output``, named ``module:function`` under ``force_cli`` and imported when used), so that ``force
export --help`` lists the formats, and a bad format, output or missing input is refused, at once,
before torch is loaded. ``sparse`` is measured on this machine and has options of its own: the
command calls ``shrink/export.py`` for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from force_cli.checkpoint.paths import check_existing, check_new_output
from force_cli.errors import ConfigError
from force_cli.lazy import resolve


@dataclass(frozen=True)
class ExportFormat:
    summary: str  # one line for ``force export --help``
    writer: str | None  # "module:function" under force_cli; None: written by its own command path (sparse)

    def write(self, checkpoint, output: Path) -> Path:
        """Write the loaded, validated ``checkpoint`` to ``output`` in this format (atomically)."""
        return resolve("force_cli", self.writer or "")(checkpoint, output)


FORMATS: dict[str, ExportFormat] = {
    "compact": ExportFormat("force checkpoint, compact variant (kept values + bit-packed mask or gap codes)",
                            "checkpoint.convert:write_compact"),
    "dense": ExportFormat("force checkpoint, dense variant (force-ckpt/1)", "checkpoint.convert:write_dense"),
    "state-dict": ExportFormat("plain safetensors state_dict, pruned weights zero, no masks (load_state_dict "
                               "strict=True)", "checkpoint.convert:write_state_dict"),
    "torch-prune": ExportFormat("torch.nn.utils.prune layout: W_orig + W_mask per pruned weight",
                                "checkpoint.convert:write_torch_prune"),
    "sparse": ExportFormat("the shrunk network (force shrink), each conv/linear layer dense or CSR, whichever ran "
                           "faster here (measured; the dense network if that is faster as a whole); load it with "
                           "the README's loader", None),
}


def check_export(source: Path, to: str, output: Path, overwrite: bool) -> None:
    """Refuse an unknown format, an output that may not be written, or a missing input."""
    if to not in FORMATS:
        raise ConfigError(f"unknown export format '{to}'; known formats are: {', '.join(FORMATS)}")
    check_new_output(output, overwrite)
    check_existing(source)
