"""Rebuild a model from a checkpoint's metadata and load its weights and masks.

A checkpoint is untrusted input: its ``model_args`` could describe a model of terabytes in a
file of kilobytes. The architecture is therefore first built on the ``meta`` device (shapes
only, no memory), every tensor shape is compared with the file's, and only a model that matches
the file, and so is no bigger than it, is built for real.
"""

from __future__ import annotations

import torch
from torch import nn

from force_cli.checkpoint import Checkpoint, load_checkpoint
from force_cli.data import dataset_info
from force_cli.errors import CheckpointError, ForceError
from force_cli.models import build_model
from force_cli.models.refs import check_trusted
from force_cli.pruning.masks import validate_masks

#: Bounds on the builder arguments a checkpoint may ask for (ImageNet is 224 px, 3 channels, 1000 classes).
MODEL_ARG_BOUNDS = {"num_classes": (1, 100_000), "in_channels": (1, 64), "image_size": (1, 1024)}


def _check_model_args(args) -> dict:
    if not isinstance(args, dict):
        raise CheckpointError("the checkpoint's 'model_args' metadata is missing or malformed; re-create it with `force prune`")
    for key, (low, high) in MODEL_ARG_BOUNDS.items():
        value = args.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise CheckpointError(f"the checkpoint's model_args '{key}' is {value!r}, not an integer in "
                                  f"[{low}, {high}]; the file is corrupt, re-create it with `force prune`")
    if not isinstance(args.get("imagenet_style", False), bool):
        raise CheckpointError("the checkpoint's model_args 'imagenet_style' is not true or false; the file is corrupt")
    return args


def build_from_metadata(metadata: dict, device: torch.device | str | None = None) -> nn.Module:
    """The architecture the checkpoint was made with, without touching its weights."""
    args = _check_model_args(metadata.get("model_args"))
    name = metadata.get("model")
    if not isinstance(name, str):
        raise CheckpointError("the checkpoint's 'model' metadata is malformed; re-create it with `force prune`")
    check_trusted(name)  # an import path runs code: only with --trust-model-code
    try:
        if device is None:
            return build_model(name, init=None, **args)
        with torch.device(device):
            return build_model(name, init=None, **args)
    except ForceError as exc:
        raise CheckpointError(f"cannot rebuild the checkpoint's model: {exc}") from None
    except TypeError as exc:
        raise CheckpointError(f"the checkpoint's model arguments do not fit model '{name}' ({exc}); re-create it") from None


def check_declared_shapes(metadata: dict, shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """Compare the shapes a file declares with its model's, built on the meta device (no memory),
    key by key; return that skeleton. Used before the tensors are read (``load_for_model``)."""
    skeleton = build_from_metadata(metadata, "meta")
    _compare_shapes(skeleton, metadata["model"], shapes)
    return skeleton


def _compare_shapes(skeleton: nn.Module, model: str, shapes: dict[str, tuple[int, ...]]) -> None:
    expected = skeleton.state_dict()
    for key, tensor in expected.items():
        if key not in shapes:
            raise CheckpointError(f"the checkpoint lacks the weight '{key}' of model '{model}'; the file is corrupt or "
                                  "was made by other code, re-create it with `force prune`")
        if tuple(shapes[key]) != tuple(tensor.shape):
            raise CheckpointError(f"the checkpoint's '{key}' has shape {tuple(shapes[key])} but model "
                                  f"'{model}' needs {tuple(tensor.shape)}; the file was made for a different model or is corrupt, re-create it")
    for key in shapes:
        if key not in expected:
            raise CheckpointError(f"the checkpoint holds '{key}', which model '{model}' has no place for; "
                                  "the file is corrupt or was made by other code, re-create it")


def _check_read(ckpt: Checkpoint, skeleton: nn.Module) -> None:
    """The tensors and masks read, against the model's skeleton."""
    _compare_shapes(skeleton, ckpt.metadata["model"], {k: tuple(v.shape) for k, v in ckpt.state_dict.items()})
    validate_masks(ckpt.masks, skeleton)


def check_shapes(ckpt: Checkpoint) -> None:
    """Compare the file's tensors and masks with the model's, key by key."""
    _check_read(ckpt, build_from_metadata(ckpt.metadata, "meta"))


def load_for_model(path) -> Checkpoint:
    """Read a checkpoint whose every declared shape was first compared with its model (built on the
    meta device from its metadata), so that nothing is allocated for a file that does not fit its
    model; then its tensors and masks, against the same skeleton. What every command that reads a
    checkpoint uses; ``model_from_checkpoint`` need not check the result again."""
    skeletons = []
    ckpt = load_checkpoint(path, check_declared=lambda metadata, shapes: skeletons.append(
        check_declared_shapes(metadata, shapes)))
    _check_read(ckpt, skeletons[0])
    ckpt.checked = True
    return ckpt


def model_from_checkpoint(ckpt: Checkpoint, device: torch.device | str = "cpu") -> nn.Module:
    """A freshly built model holding the checkpoint's weights (strict load), masks checked
    against it (already, when ``load_for_model`` read it); returned in eval mode (call ``.train()``
    to train it)."""
    if not ckpt.checked:
        check_shapes(ckpt)
    model = build_from_metadata(ckpt.metadata)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"the checkpoint's weights do not fit model '{ckpt.metadata['model']}': {first}") from None
    return model.to(device).eval()


def input_shape(metadata: dict) -> tuple[int, int, int]:
    """The input a checkpoint's model takes, checked against its dataset where that is known
    without reading data: conv nets take any image size, so the weights alone cannot bound it."""
    args = _check_model_args(metadata["model_args"])
    shape = (args["in_channels"], args["image_size"], args["image_size"])
    name = metadata.get("dataset")
    if isinstance(name, str) and name != "imagefolder":
        try:
            info = dataset_info(name)
        except ForceError:
            return shape  # a dataset this version does not know: only the bounds apply
        if (info.in_channels, info.image_size) != shape[:2]:
            raise CheckpointError(
                f"the checkpoint's model_args describe {shape[0]}x{shape[1]}x{shape[2]} inputs but its dataset "
                f"'{name}' has {info.in_channels}x{info.image_size}x{info.image_size}; the file is corrupt, re-create it")
    return shape
