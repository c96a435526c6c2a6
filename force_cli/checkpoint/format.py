"""The one place that reads and writes force checkpoints (format ``force-ckpt/1``).

A checkpoint is a single ``.safetensors`` file (nothing pickled, so an untrusted file is safe to open):
  * every ``state_dict`` entry of the model under its own key (pruned weights stored as zero),
    so a plain ``model.load_state_dict`` works;
  * one boolean mask per pruned parameter under ``mask:<parameter name>``;
  * training state (optimizer, scheduler, RNG) under ``state:<name>`` keys, only in partial
    training checkpoints;
  * string metadata: ``format`` plus the fields below. Values of ``JSON_FIELDS`` are JSON text,
    every other value is a plain string.

Writes are atomic (``atomic.write_atomic``): one temporary file of our own in the same folder,
flushed to disk, then renamed over the final name, so an interrupted write never leaves a
half-written file there nor damages an existing one. Reading checks the masks against the
recorded sparsity, so a file whose masks were altered is refused rather than trusted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as serialize

from force_cli import FORMAT_VERSION
from force_cli.checkpoint import compact as compact_format
from force_cli.atomic import write_atomic
from force_cli.checkpoint.paths import check_existing
from force_cli.errors import CheckpointError, ForceError, OutputError
from force_cli.safe_text import first_line

MASK_PREFIX = "mask:"
STATE_PREFIX = "state:"
#: Metadata fields stored as JSON text (all others are plain strings).
JSON_FIELDS = frozenset(
    {"model_args", "pruning", "target_sparsity", "achieved_sparsity", "seed", "training", "history", "metrics",
     "pruning_result", "ablation"}
)
REQUIRED_FIELDS = ("format", "stage", "model", "model_args", "dataset")
STAGES = ("init", "trained", "partial")


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # training state, without the prefix
    warnings: list[str] = field(default_factory=list)  # what the reader found odd but usable (shown by the CLI)
    checked: bool = False  # tensors and masks compared with the model's shapes (restore.load_for_model)

    @property
    def stage(self) -> str:
        return self.metadata["stage"]


def _encode_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    encoded = {"format": FORMAT_VERSION}
    for key, value in metadata.items():
        if key == "format":
            continue
        if key in JSON_FIELDS:
            encoded[key] = json.dumps(value, sort_keys=True)
        elif isinstance(value, str):
            encoded[key] = value
        else:
            raise TypeError(f"metadata field '{key}' must be a string or be listed in JSON_FIELDS")
    return encoded


def _decode_metadata(raw: dict[str, str], path: Path) -> dict[str, Any]:
    decoded = {}
    for key, value in raw.items():
        if key in JSON_FIELDS:
            try:
                decoded[key] = json.loads(value)
            except (ValueError, RecursionError):  # bad JSON, an integer of more than 4300 digits, deep nesting
                raise CheckpointError(f"{path}: metadata field '{key}' is not valid JSON; the file is corrupt") from None
        else:
            decoded[key] = value
    return decoded


def save_checkpoint(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    masks: dict[str, torch.Tensor],
    metadata: dict[str, Any],
    extra: dict[str, torch.Tensor] | None = None,
    compact: bool = False,
) -> Path:
    """Write a checkpoint atomically. Pruned weights are zeroed in the file (not in the caller's tensors).

    ``compact``: write the compact variant (``checkpoint/compact.py``), which stores only the kept values.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot write {path}: folder '{path.parent}' does not exist; create it or choose another -o path")
    if metadata.get("stage") not in STAGES:
        raise ValueError(f"metadata 'stage' must be one of {STAGES}")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if ":" in key:
            raise ValueError(f"state_dict key '{key}' contains ':', which is reserved for masks and state")
        value = value.detach().cpu()
        if key in masks:  # where, not multiply: a pruned -w or NaN would be stored as -0.0 or NaN
            value = torch.where(masks[key].detach().cpu().to(torch.bool), value, torch.zeros((), dtype=value.dtype))
        tensors[key] = value.contiguous()
    for key, mask in masks.items():
        if key not in state_dict:
            raise ValueError(f"mask '{key}' has no state_dict entry")
        tensors[MASK_PREFIX + key] = mask.detach().cpu().to(torch.bool).contiguous()
    for key, value in (extra or {}).items():
        tensors[STATE_PREFIX + key] = value.detach().cpu().contiguous()
    header = _encode_metadata(metadata)
    if compact:  # the compact variant: same content, pruned weights re-encoded (checkpoint/compact.py)
        tensors, header = compact_format.encode(tensors, header)

    try:
        data = serialize(tensors, metadata=header)
    except OSError as exc:
        raise OutputError.from_os(exc, path, "checkpoint") from None
    return write_atomic(path, data, "checkpoint")


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Only the metadata (cheap: reads the header, not the tensors)."""
    return _open(Path(path), tensors=False).metadata


#: Called with a checkpoint's metadata and the shape of every model tensor it declares (dense
#: ones from the safetensors header, compact ones from their layout) before any tensor is read.
ShapeCheck = Callable[[dict[str, Any], dict[str, tuple[int, ...]]], None]


def load_checkpoint(path: str | Path, check_declared: ShapeCheck | None = None) -> Checkpoint:
    """Read and check a checkpoint. Raises CheckpointError with a one-line reason for any bad file.

    ``check_declared`` sees the declared shapes before anything is allocated and raises to refuse
    them: ``restore.load_for_model`` compares them with the model, so that a small compact file
    cannot make the reader allocate what no model of its metadata has."""
    return _open(Path(path), tensors=True, check_declared=check_declared)


def _declared_shapes(f, keys: list[str], raw: dict[str, str], path: Path) -> dict[str, tuple[int, ...]]:
    """The shape of every model tensor the file declares, from its header and metadata alone."""
    shapes = compact_format.declared_shapes(raw, path) if raw.get("format") == compact_format.FORMAT else {}
    for key in keys:
        if not key.startswith((MASK_PREFIX, STATE_PREFIX) + compact_format.PREFIXES):
            shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def _open(path: Path, tensors: bool, check_declared: ShapeCheck | None = None) -> Checkpoint:
    check_existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            fmt = raw.get("format")
            if fmt is None:
                raise CheckpointError(f"'{path}' is a safetensors file but not a force checkpoint (no 'format' metadata); create one with `force prune`")
            if fmt not in (FORMAT_VERSION, compact_format.FORMAT):
                raise CheckpointError(
                    f"'{path}' has format '{fmt}', which this version of force-cli cannot read "
                    f"(it reads '{FORMAT_VERSION}' and '{compact_format.FORMAT}'); upgrade force-cli or re-create the checkpoint"
                )
            missing = [k for k in REQUIRED_FIELDS if k not in raw]
            if missing:
                raise CheckpointError(f"'{path}' lacks the metadata field '{missing[0]}'; the file is corrupt, re-create it")
            metadata = _decode_metadata(raw, path)
            metadata.pop(compact_format.LAYOUT_FIELD, None)
            state, masks, extra = {}, {}, {}
            if tensors:
                keys = list(f.keys())
                if check_declared is not None:
                    check_declared(metadata, _declared_shapes(f, keys, raw, path))
                if fmt == compact_format.FORMAT:  # decode the pruned weights; the rest reads as dense
                    state, masks, keys = compact_format.decode(f, raw, path)
                for key in keys:
                    value = f.get_tensor(key)
                    if key.startswith(MASK_PREFIX):
                        masks[key[len(MASK_PREFIX):]] = value
                    elif key.startswith(STATE_PREFIX):
                        extra[key[len(STATE_PREFIX):]] = value
                    else:
                        state[key] = value
    except ForceError:  # ours, from the checks above or from check_declared
        raise
    except Exception as exc:  # safetensors raises its own error types, OSError, or ValueError on damage
        reason = first_line(exc)
        raise CheckpointError(f"cannot read checkpoint '{path}': it is truncated or not a safetensors file ({reason})") from None
    if metadata["stage"] not in STAGES:
        raise CheckpointError(f"'{path}' has unknown stage '{metadata['stage']}'; the file is corrupt, re-create it")
    for name, mask in masks.items():
        if mask.dtype != torch.bool:
            raise CheckpointError(f"'{path}': mask '{name}' is {mask.dtype}, not bool; the file is corrupt, re-create it")
        if name not in state:
            raise CheckpointError(f"'{path}': mask '{name}' has no weight; the file is corrupt, re-create it")
        if tuple(mask.shape) != tuple(state[name].shape):
            raise CheckpointError(
                f"'{path}': mask '{name}' has shape {tuple(mask.shape)} but its weight has {tuple(state[name].shape)}; "
                "the file is corrupt, re-create it"
            )
    if metadata["format"] == compact_format.FORMAT:  # the dense variant's order (safetensors sorts names)
        state, masks = dict(sorted(state.items())), dict(sorted(masks.items()))
    warnings = [w for w in [check_recorded_sparsity(masks, metadata, path)] if w] if tensors else []
    return Checkpoint(state_dict=state, masks=masks, metadata=metadata, extra=extra, warnings=warnings)


def check_recorded_sparsity(masks: dict[str, torch.Tensor], metadata: dict[str, Any], path: Path) -> str | None:
    """A warning when the masks contradict the recorded ``achieved_sparsity`` (an altered file).

    The masks are what every command uses, so the sparsity is recomputed from them; the warning
    says so. `train` records the recomputed value in its output. A value that is not a number is
    corruption and refused.
    """
    recorded = metadata.get("achieved_sparsity")
    if recorded is None or not masks:
        return None
    if isinstance(recorded, bool) or not isinstance(recorded, (int, float)) or not math.isfinite(recorded):
        raise CheckpointError(f"'{path}': metadata 'achieved_sparsity' is not a number; the file is corrupt, re-create it")
    actual = recomputed_sparsity(masks)
    total = sum(m.numel() for m in masks.values())
    if abs(actual - recorded) * total <= 1.0 + 1e-6:
        return None
    return (f"'{path}': its masks remove {actual:.4%} of the weights but its metadata says {recorded:.4%}; "
            f"the masks were altered after pruning, and {actual:.4%} (the masks) is what is used")


def recomputed_sparsity(masks: dict[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / total if total else 0.0
