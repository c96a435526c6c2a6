"""`force export` as a library call: a force checkpoint into a format of the registry
(``checkpoint/export.py``; the writers are ``checkpoint/convert.py``).

The source is validated exactly as `train`, `eval` and `inspect` validate it (every shape against
its model built on the meta device, the masks, the model arguments), so a file they refuse is not
exported either; a model that is an import path is rebuilt only under ``trusted_model_code()``.
"""

from __future__ import annotations

from pathlib import Path

from force_cli.checkpoint.export import FORMATS, check_export
from force_cli.checkpoint.paths import same_file
from force_cli.errors import ConfigError
from force_cli.restore import input_shape, load_for_model
from force_cli.shrink.program import is_shrunk  # the shrunk file format only (checkpoint layer)


def export_checkpoint(source: str | Path, to: str, output: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``source`` in format ``to`` to ``output`` (atomically); return ``output``.

    The input is validated as every other reader validates it (declared shapes, masks, model
    arguments), so that export never writes what `inspect`, `train` or `evaluate` would refuse.
    The caller locks the output (the command line holds it while this runs)."""
    if to == "sparse":  # it times the network: force_cli.shrink.export, a layer above this one
        raise ConfigError("the sparse export is measured; call force_cli.shrink.export.export_sparse")
    output = Path(output)
    check_export(Path(source), to, output, overwrite)
    if is_shrunk(source):
        raise ConfigError(f"'{source}' is a shrunk network, which has no masks to export as '{to}'; export the "
                          "checkpoint it was made from, or use --to sparse")
    ckpt = load_for_model(source)  # its shapes and masks checked against the model, as every reader's
    input_shape(ckpt.metadata)  # the model arguments against the dataset, as inspect checks them
    if same_file(source, output):
        raise ConfigError(f"the output '{output}' is the input checkpoint; choose another -o path")
    return FORMATS[to].write(ckpt, output)
