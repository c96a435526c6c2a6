"""The one place that knows the checkpoint file (``force-ckpt/1``), one module per concern:

- ``format``: reading and writing the file (dense variant), its masks, metadata and training state;
- ``compact``: the compact variant (kept values plus a bit-packed mask or gap codes);
- ``paths``: every file name a command derives (outputs, partials, sweep cells) and the checks of
  a path that need no torch;
- ``metadata``: the version/provenance block every writer records, and typed readers with their
  range checks;
- ``export``: the registry of `force export` formats (name, help line, writer);
- ``convert``: the writers of the formats other code loads (state-dict, torch-prune).

The names below load their submodule on first use (``force_cli.lazy``), so that the torch-free
modules (``paths``, ``export``) import without torch.
"""

from force_cli.lazy import lazy_exports

_EXPORTS = {
    "Checkpoint": "format", "load_checkpoint": "format", "read_metadata": "format", "save_checkpoint": "format",
    "recomputed_sparsity": "format", "check_recorded_sparsity": "format", "MASK_PREFIX": "format",
    "STATE_PREFIX": "format",
    "check_existing": "paths", "check_new_output": "paths",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
