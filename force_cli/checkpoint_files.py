"""Checks of a checkpoint's path that need no torch: an input that must be there, an output that
may be written.

Kept apart from ``checkpoint.py`` (which reads and writes tensors) so that the command line
reports a missing file or an output in the way at once, before torch is loaded; the readers and
writers run the same checks.
"""

from __future__ import annotations

from pathlib import Path

from force_cli.errors import CheckpointError, ConfigError


def check_existing(path: Path) -> None:
    """Refuse an input checkpoint that is not there or is not a file."""
    if not path.exists():
        raise CheckpointError(f"checkpoint '{path}' does not exist; check the path (create one with `force prune`)")
    if not path.is_file():
        raise CheckpointError(f"'{path}' is not a file; give the path of a .safetensors checkpoint")


def check_new_output(path: Path, overwrite: bool) -> None:
    """Refuse, before any work starts, an output that cannot be written or would replace a file."""
    if str(path) == "" or path.name in ("", ".", ".."):
        raise ConfigError(f"output '{path}' is not a file name; give one such as checkpoint.safetensors")
    if not path.parent.is_dir():
        if path.parent.exists():
            raise ConfigError(f"output folder '{path.parent}' is a file, not a folder; choose another -o path")
        raise ConfigError(f"output folder '{path.parent}' does not exist; create it first or choose another -o path")
    if path.is_dir():
        raise ConfigError(f"output '{path}' is a folder; give a file name such as {path / 'checkpoint.safetensors'}")
    if path.exists() and not path.is_file():
        raise ConfigError(f"output '{path}' exists and is not a regular file; choose another -o path")
    if path.exists() and not overwrite:
        raise ConfigError(f"output '{path}' already exists; choose another -o path or pass --overwrite")
