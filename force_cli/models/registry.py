"""The model registry: every model force-cli can build, by name.

``MODELS`` is the single source of names: CLI choices, help text and "unknown model" errors all
come from it (through ``models/names.py``, which lists the same names without importing torch). Each entry has a builder for CIFAR-sized and generic inputs and, where one exists,
a builder of torchvision's ImageNet architecture (``models/imagenet.py``: torchvision's own model,
imported on first use) for ``imagenet_style`` datasets (imagenet, imagefolder; tiny-imagenet uses
the paper's CIFAR networks). resnet110, lenet300 and lenet5 have no ImageNet architecture: on
those datasets they use their generic builder (it works at any size they accept), rather than
being refused.
Incompatible model/input pairs are refused by ``check_compatible`` before anything is allocated.

A model may also be a reference (``models/refs.py``): ``torchvision:NAME`` or
``package.module:factory``. ``name in MODELS`` is true for a reference too (it names a model this
registry can build); iterating ``MODELS`` lists the registry names only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from force_cli.errors import IncompatibleError, UnknownNameError
from force_cli.models import cifar_resnet, imagenet, lenet, refs, vgg
from force_cli.models.init import INIT_SCHEMES, initialize
from force_cli.models.names import DEFAULT_INIT

__all__ = [
    "DEFAULT_INIT", "INIT_SCHEMES", "MODELS", "ModelSpec",
    "build_model", "check_compatible", "initialize", "model_names",
]

Builder = Callable[[int, int, int], nn.Module]  # (num_classes, in_channels, image_size) -> model


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry. Minimum sizes are input sides (square images) each builder accepts."""

    name: str
    description: str  # one line for --help
    builder: Builder  # CIFAR-style / generic architecture
    imagenet_builder: Builder | None = None  # torchvision's ImageNet architecture, if any
    min_image_size: int = 1
    imagenet_min_image_size: int = 1
    size_reason: str = ""  # why smaller inputs cannot work, for the error message

    def pick(self, imagenet_style: bool) -> tuple[Builder, int]:
        """The builder and its minimum image size for this kind of dataset."""
        if imagenet_style and self.imagenet_builder is not None:
            return self.imagenet_builder, self.imagenet_min_image_size
        return self.builder, self.min_image_size


def _resnet(name: str, description: str) -> ModelSpec:
    return ModelSpec(
        name, description, getattr(cifar_resnet, name), getattr(imagenet, name),
        cifar_resnet.MIN_IMAGE_SIZE, imagenet.RESNET_MIN_IMAGE_SIZE,
    )


def _vgg(name: str, description: str) -> ModelSpec:
    return ModelSpec(
        name, description, getattr(vgg, name), getattr(imagenet, name),
        vgg.min_image_size(vgg.CFGS[name]), imagenet.vgg_min_image_size(imagenet.VGG_CFGS[name]),
        size_reason="its pooling layers halve the image that many times",
    )


class ModelRegistry(dict):
    """Registry names -> ModelSpec; ``in`` also accepts references, which build_model resolves."""

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or (isinstance(name, str) and refs.is_reference(name))


# The model registry.
MODELS: ModelRegistry = ModelRegistry({spec.name: spec for spec in (
    _resnet("resnet18", "ResNet-18 (CIFAR-style; torchvision's on ImageNet-style data)"),
    _resnet("resnet34", "ResNet-34 (CIFAR-style; torchvision's on ImageNet-style data)"),
    _resnet("resnet50", "ResNet-50, bottleneck (CIFAR-style; torchvision's on ImageNet-style data)"),
    _resnet("resnet101", "ResNet-101, bottleneck (CIFAR-style; torchvision's on ImageNet-style data)"),
    ModelSpec("resnet110", "ResNet-110 of He et al. for CIFAR (16/32/64 planes), any dataset",
              cifar_resnet.resnet110, None, cifar_resnet.MIN_IMAGE_SIZE),
    _resnet("resnet152", "ResNet-152, bottleneck (CIFAR-style; torchvision's on ImageNet-style data)"),
    _vgg("vgg11", "VGG-11 with batch norm (CIFAR: one linear layer; torchvision's vgg11_bn on ImageNet-style)"),
    _vgg("vgg13", "VGG-13 with batch norm (CIFAR: one linear layer; torchvision's vgg13_bn on ImageNet-style)"),
    _vgg("vgg16", "VGG-16 with batch norm (CIFAR: one linear layer; torchvision's vgg16_bn on ImageNet-style)"),
    _vgg("vgg19", "VGG-19 with batch norm (CIFAR: one linear layer; torchvision's vgg19_bn on ImageNet-style)"),
    ModelSpec("lenet300", "LeNet-300-100, fully connected; any image size",
              lenet.lenet300, None, lenet.LENET300_MIN_IMAGE_SIZE),
    ModelSpec("lenet5", "LeNet-5, two 5x5 convs then 120-84 fully connected",
              lenet.lenet5, None, lenet.lenet5_min_image_size(),
              size_reason="its two 5x5 convs and two 2x2 max-pools need it"),
)})


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
        builder, _ = _spec(name).pick(imagenet_style)
        model = builder(num_classes, in_channels, image_size)
    if init is not None:
        initialize(model, init)
    return model
