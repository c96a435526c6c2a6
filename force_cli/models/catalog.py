"""The model catalog: every model force-cli can build, by name, without importing torch.

``MODEL_SPECS`` is the single place a model is added: one ``ModelSpec`` here (its architecture in
its own module). The registry (``models/registry.py``: ``MODELS``, ``build_model``), the CLI's
choices, help texts, "unknown model" errors and the minimum-size refusals all come from it.
Builders are named ``module:function`` under ``force_cli.models`` and imported when a model is
built, as ``data/catalog.py`` names its readers, so that ``--help`` answers at once.

Each entry has a builder for CIFAR-sized and generic inputs and, where one exists, a builder of
torchvision's ImageNet architecture (``models/imagenet.py``: torchvision's own model, imported on
first use) for ``imagenet_style`` datasets (imagenet, imagefolder; tiny-imagenet uses the paper's
CIFAR networks). resnet110, lenet300 and lenet5 have no ImageNet architecture: on those datasets
they use their generic builder (it works at any size they accept), rather than being refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from force_cli.lazy import resolve
from force_cli.models import sizes

if TYPE_CHECKING:
    from torch import nn

Builder = Callable[[int, int, int], "nn.Module"]  # (num_classes, in_channels, image_size) -> model


@dataclass(frozen=True)
class ModelSpec:
    """One catalog entry. Minimum sizes are input sides (square images) each builder accepts;
    builders are ``module:function`` names under ``force_cli.models``."""

    name: str
    description: str  # one line for --help
    builder: str  # CIFAR-style / generic architecture, e.g. "cifar_resnet:resnet18"
    imagenet_builder: str | None = None  # torchvision's ImageNet architecture, if any
    min_image_size: int = 1
    imagenet_min_image_size: int = 1
    size_reason: str = ""  # why smaller inputs cannot work, for the error message

    def pick(self, imagenet_style: bool) -> tuple[str, int]:
        """The builder's name and its minimum image size for this kind of dataset."""
        if imagenet_style and self.imagenet_builder is not None:
            return self.imagenet_builder, self.imagenet_min_image_size
        return self.builder, self.min_image_size

    def load(self, imagenet_style: bool) -> Builder:
        """The builder for this kind of dataset, its module imported now (torch with it)."""
        return resolve("force_cli.models", self.pick(imagenet_style)[0])


def _resnet(name: str, description: str) -> ModelSpec:
    return ModelSpec(
        name, description, f"cifar_resnet:{name}", f"imagenet:{name}",
        sizes.CIFAR_RESNET_MIN_IMAGE_SIZE, sizes.IMAGENET_RESNET_MIN_IMAGE_SIZE,
    )


def _vgg(name: str, description: str) -> ModelSpec:
    return ModelSpec(
        name, description, f"vgg:{name}", f"imagenet:{name}",
        sizes.cifar_vgg_min_image_size(sizes.CIFAR_VGG_CFGS[name]),
        sizes.imagenet_vgg_min_image_size(sizes.IMAGENET_VGG_CFGS[name]),
        size_reason="its pooling layers halve the image that many times",
    )


MODEL_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    _resnet("resnet18", "ResNet-18 (CIFAR-style; torchvision's on ImageNet-style data)"),
    _resnet("resnet34", "ResNet-34 (CIFAR-style; torchvision's on ImageNet-style data)"),
    _resnet("resnet50", "ResNet-50, bottleneck (CIFAR-style; torchvision's on ImageNet-style data)"),
    _resnet("resnet101", "ResNet-101, bottleneck (CIFAR-style; torchvision's on ImageNet-style data)"),
    ModelSpec("resnet110", "ResNet-110 of He et al. for CIFAR (16/32/64 planes), any dataset",
              "cifar_resnet:resnet110", None, sizes.CIFAR_RESNET_MIN_IMAGE_SIZE),
    _resnet("resnet152", "ResNet-152, bottleneck (CIFAR-style; torchvision's on ImageNet-style data)"),
    _vgg("vgg11", "VGG-11 with batch norm (CIFAR: one linear layer; torchvision's vgg11_bn on ImageNet-style)"),
    _vgg("vgg13", "VGG-13 with batch norm (CIFAR: one linear layer; torchvision's vgg13_bn on ImageNet-style)"),
    _vgg("vgg16", "VGG-16 with batch norm (CIFAR: one linear layer; torchvision's vgg16_bn on ImageNet-style)"),
    _vgg("vgg19", "VGG-19 with batch norm (CIFAR: one linear layer; torchvision's vgg19_bn on ImageNet-style)"),
    ModelSpec("lenet300", "LeNet-300-100, fully connected; any image size",
              "lenet:lenet300", None, sizes.LENET300_MIN_IMAGE_SIZE),
    ModelSpec("lenet5", "LeNet-5, two 5x5 convs then 120-84 fully connected",
              "lenet:lenet5", None, sizes.lenet5_min_image_size(),
              size_reason="its two 5x5 convs and two 2x2 max-pools need it"),
)}
