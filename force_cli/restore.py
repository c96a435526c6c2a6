"""Rebuild a model from a checkpoint's metadata and load its weights and masks."""

from __future__ import annotations

import torch
from torch import nn

from force_cli.checkpoint import Checkpoint
from force_cli.errors import CheckpointError, ForceError
from force_cli.models import build_model
from force_cli.models.refs import check_trusted
from force_cli.pruning.masks import validate_masks


def build_from_metadata(metadata: dict) -> nn.Module:
    """The architecture the checkpoint was made with, without touching its weights."""
    args = metadata.get("model_args")
    if not isinstance(args, dict):
        raise CheckpointError("the checkpoint's 'model_args' metadata is missing or malformed; re-create it with `force prune`")
    check_trusted(str(metadata["model"]))  # an import path runs code: only with --trust-model-code
    try:
        return build_model(metadata["model"], init=None, **args)
    except ForceError as exc:
        raise CheckpointError(f"cannot rebuild the checkpoint's model: {exc}") from None
    except TypeError as exc:
        raise CheckpointError(f"the checkpoint's model arguments do not fit model '{metadata['model']}' ({exc}); re-create it") from None


def model_from_checkpoint(ckpt: Checkpoint, device: torch.device | str = "cpu") -> nn.Module:
    """A freshly built model holding the checkpoint's weights (strict load), masks checked against it."""
    model = build_from_metadata(ckpt.metadata)
    validate_masks(ckpt.masks, model)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"the checkpoint's weights do not fit model '{ckpt.metadata['model']}': {first}") from None
    return model.to(device)


def input_shape(metadata: dict) -> tuple[int, int, int]:
    args = metadata["model_args"]
    return (args["in_channels"], args["image_size"], args["image_size"])
