"""Models outside the registry: ``torchvision:NAME`` and ``package.module:factory``.

``torchvision:NAME`` builds any torchvision classification model with ``weights=None``. An import
path calls ``factory``, passing whichever of ``num_classes``, ``in_channels`` and ``image_size`` it
accepts, and must return an ``nn.Module`` giving (N, num_classes) logits. The reference, a string,
is what a checkpoint records as its ``model``; ``model_args`` records the arguments.

Importing a module runs its code. Naming one on the command line (``force prune --model``) is the
user's choice; a checkpoint naming one is rebuilt only under ``trusted_model_code()`` (the CLI's
``--trust-model-code``), so that opening an untrusted file never runs code.
"""

from __future__ import annotations

import importlib
import inspect
import re

import torch
from torch import nn

from force_cli.errors import ConfigError, IncompatibleError
from force_cli.safe_text import brief, first_line
from force_cli.models.imagenet import torchvision_models
# the trust setting lives apart so that the CLI can set it without loading torch; re-exported here
from force_cli.models.trust import TORCHVISION, check_trusted, is_reference, runs_code, trusted_model_code  # noqa: F401

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_IMPORT_PATH = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}(\.{_IDENT})*")
FACTORY_ARGS = ("num_classes", "in_channels", "image_size")


def _failure(exc: BaseException) -> str:
    """What user code did instead of working, for a one-line message (sys.exit included)."""
    if isinstance(exc, SystemExit):
        return f"it called sys.exit({brief(exc.code)})"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"


def _syntax_error(name: str) -> ConfigError:
    return ConfigError(f"model '{name}' is not a reference of the form torchvision:NAME or package.module:factory; "
                       f"fix the spelling or use a registry name")


def _torchvision(name: str, num_classes: int, in_channels: int) -> nn.Module:
    tvm = torchvision_models(name)
    arch = name.split(":", 1)[1]
    known = tvm.list_models(module=tvm)  # classification models only
    if arch not in known:
        raise ConfigError(f"'{arch}' is not a torchvision classification model; known: {', '.join(sorted(known))}")
    if in_channels != 3:
        raise IncompatibleError(f"torchvision models take 3-channel images, the dataset has {in_channels}; "
                                f"use a 3-channel dataset (e.g. synthetic, cifar10)")
    return tvm.get_model(arch, weights=None, num_classes=num_classes)


def _import_factory(name: str):
    if not _IMPORT_PATH.fullmatch(name):
        raise _syntax_error(name)
    module_name, attr = name.split(":")
    try:
        target = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # ImportError, or anything the module raises or exits with while importing
        raise ConfigError(f"cannot import '{module_name}' for model '{name}' ({_failure(exc)}); "
                          f"check the module is on PYTHONPATH and does not exit when imported") from None
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"module '{module_name}' has no '{attr}' for model '{name}'; check the factory's name")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"'{name}' is not callable (it is of type {type(target).__name__}); "
                          f"name a function that returns an nn.Module")
    return target


def build_reference(name: str, *, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """Build the model a reference names (refusing, with one line, one that is not a module)."""
    if name.startswith(TORCHVISION + ":"):
        return _torchvision(name, num_classes, in_channels)
    factory = _import_factory(name)
    given = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in given.items() if takes_any or k in params}
    try:
        model = factory(**kwargs)
    except (Exception, SystemExit) as exc:
        raise ConfigError(f"model factory '{name}' failed ({_failure(exc)}); "
                          f"it is called with {', '.join(kwargs) or 'no arguments'}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory '{name}' returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def check_reference(name: str, *, num_classes: int, in_channels: int, image_size: int) -> None:
    """Refuse a reference that cannot be built or does not map (2, C, S, S) images to (2, num_classes).

    The check builds the model on the meta device (no memory, no init). A model whose forward
    cannot run on meta tensors (it calls .item(), say) is not refused here.
    """
    with torch.device("meta"):
        model = build_reference(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
        try:
            out = model.eval()(torch.empty(2, in_channels, image_size, image_size))
        except (Exception, SystemExit) as exc:
            first = first_line(exc)
            if isinstance(exc, SystemExit):
                first = _failure(exc)
            elif "meta" in first.lower():
                return
            raise IncompatibleError(f"model '{name}' cannot take {in_channels}x{image_size}x{image_size} images "
                                    f"({first}); use a dataset it fits") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise IncompatibleError(f"model '{name}' gives {got} for a batch of 2, expected (2, {num_classes}) logits; "
                                f"make it take num_classes={num_classes}")
