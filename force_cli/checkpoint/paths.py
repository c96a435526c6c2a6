"""Every file name a command derives, decided here once, and the checks of a path that need no
torch: an input that must be there, an output that may be written, two names for one file.

Torch-free, so that the command line reports a missing file or an output in the way at once,
before torch is loaded; the readers and writers run the same checks.

  * `prune`: ``MODEL-DATASET-METHOD-sSPARSITY-seedSEED.safetensors`` (``pruned_output``);
  * `train`: ``X.safetensors`` -> ``X-trained.safetensors`` (``trained_output``), its progress in
    ``X-trained.partial.safetensors`` (``partial_path``);
  * `shrink`: ``X.safetensors`` -> ``X-shrunk.safetensors`` (``shrunk_output``);
  * `sweep`: ``OUT/cells/CELL/`` with ``pruned``, ``source`` (an ablated cell's unablated mask),
    ``trained`` (and its partial) ``.safetensors`` and ``train.jsonl`` (``cell_files``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from force_cli.config import exact_text
from force_cli.errors import CheckpointError, ConfigError

SUFFIX = ".safetensors"
PARTIAL_SUFFIX = ".partial.safetensors"


def stem(path: Path) -> str:
    """The name without ``.safetensors`` (or without its last suffix, for another name)."""
    return path.name[: -len(SUFFIX)] if path.name.endswith(SUFFIX) else path.stem


def pruned_output(model: str, dataset: str, method: str, sparsity: float, seed: int) -> Path:
    """Where `force prune` writes without -o: every setting that tells two runs apart, exactly."""
    return Path(f"{model}-{dataset}-{method}-s{exact_text(sparsity)}-seed{seed}{SUFFIX}")


def trained_output(checkpoint: str | Path) -> Path:
    """``X.safetensors`` -> ``X-trained.safetensors`` in the same folder; for a partial checkpoint
    ``Y.partial.safetensors`` -> ``Y.safetensors`` (the run's own output)."""
    checkpoint = Path(checkpoint)
    if checkpoint.name.endswith(PARTIAL_SUFFIX) and len(checkpoint.name) > len(PARTIAL_SUFFIX):
        return checkpoint.with_name(checkpoint.name[: -len(PARTIAL_SUFFIX)] + SUFFIX)
    return checkpoint.with_name(f"{stem(checkpoint)}-trained{SUFFIX}")


def partial_path(output: str | Path) -> Path:
    """Where a run writing ``output`` keeps its partial checkpoint."""
    output = Path(output)
    return output.with_name(stem(output) + PARTIAL_SUFFIX)


def shrunk_output(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.stem + "-shrunk" + SUFFIX)


@dataclass(frozen=True)
class CellFiles:
    """A sweep cell's files, all in its own folder."""

    folder: Path
    pruned: Path  # the mask the cell trains (after its ablation, if any)
    source: Path  # an ablated cell: its method's own mask, before the ablation; else ``pruned``
    trained: Path
    partial: Path
    log: Path


def cell_files(out_dir: Path, key: str, ablated: bool) -> CellFiles:
    folder = out_dir / "cells" / key
    pruned, trained = folder / f"pruned{SUFFIX}", folder / f"trained{SUFFIX}"
    return CellFiles(folder=folder, pruned=pruned, source=folder / f"source{SUFFIX}" if ablated else pruned,
                     trained=trained, partial=partial_path(trained), log=folder / "train.jsonl")


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same path once resolved (also before it exists),
    or two names (a hard link) of one existing file."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop while resolving
        return False


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
