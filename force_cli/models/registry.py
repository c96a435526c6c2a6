"""The model registry: builds the catalog's models (``models/catalog.py``) by name.

``MODELS`` holds the catalog's ``MODEL_SPECS`` (the one place a model is added), in its order;
a builder's module (torch with it) is imported when that model is built. Incompatible
model/input pairs are refused by ``check_compatible`` before anything is allocated.

A model may also be a reference (``models/refs.py``): ``torchvision:NAME`` or
``package.module:factory``. ``name in MODELS`` is true for a reference too (it names a model this
registry can build); iterating ``MODELS`` lists the registry names only.
"""

from __future__ import annotations

from torch import nn

from force_cli.errors import IncompatibleError, UnknownNameError
from force_cli.models import refs
from force_cli.models.catalog import MODEL_SPECS, ModelSpec
from force_cli.models.init import INIT_SCHEMES, initialize
from force_cli.models.names import DEFAULT_INIT

__all__ = [
    "DEFAULT_INIT", "INIT_SCHEMES", "MODELS", "ModelSpec",
    "build_model", "check_compatible", "initialize", "model_names",
]


class ModelRegistry(dict):
    """Registry names -> ModelSpec; ``in`` also accepts references, which build_model resolves."""

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or (isinstance(name, str) and refs.is_reference(name))


# The model registry: the catalog's entries, in its order.
MODELS: ModelRegistry = ModelRegistry(MODEL_SPECS)


def model_names() -> list[str]:
    """Registry names, in registry order."""
    return list(MODELS)


def _spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownNameError("model", name, MODELS) from None


def check_compatible(
    name: str, *, num_classes: int, in_channels: int, image_size: int, imagenet_style: bool = False
) -> None:
    """Refuse an unknown model or a model/input pair that cannot work, without building anything."""
    spec = None if refs.is_reference(name) else _spec(name)
    for what, value in (("num_classes", num_classes), ("in_channels", in_channels), ("image_size", image_size)):
        if value < 1:
            raise IncompatibleError(f"{what} must be at least 1 to build model '{name}', got {value}")
    if spec is None:  # a reference: built on the meta device, no memory, no weights
        refs.check_reference(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
        return
    _, min_size = spec.pick(imagenet_style)
    if image_size < min_size:
        fitting = [s.name for s in MODELS.values() if s.pick(imagenet_style)[1] <= image_size]
        reason = f" ({spec.size_reason})" if spec.size_reason else ""
        raise IncompatibleError(
            f"model '{name}' needs images of at least {min_size}x{min_size}{reason}, "
            f"got {image_size}x{image_size}; use a dataset with larger images or a model that "
            f"accepts {image_size}x{image_size}: {', '.join(fitting)}"
        )


def build_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    imagenet_style: bool = False,
    init: str | None = DEFAULT_INIT,
) -> nn.Module:
    """Build a registry model for (N, in_channels, image_size, image_size) inputs, returning logits.

    ``init`` names a scheme of ``INIT_SCHEMES`` (None keeps the model's own init: PyTorch's default,
    or torchvision's for its architectures); it draws from the global torch RNG, so seed it first
    for a reproducible model.
    """
    check_compatible(name, num_classes=num_classes, in_channels=in_channels,
                     image_size=image_size, imagenet_style=imagenet_style)
    if init is not None and init not in INIT_SCHEMES:
        raise UnknownNameError("init", init, INIT_SCHEMES)
    if refs.is_reference(name):
        model = refs.build_reference(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    else:
        model = _spec(name).load(imagenet_style)(num_classes, in_channels, image_size)
    if init is not None:
        initialize(model, init)
    return model
