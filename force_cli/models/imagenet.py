"""torchvision's ImageNet ResNets and VGG-bn, for ``imagenet_style`` datasets (imagenet, imagefolder).

Each builder returns torchvision's own ``resnet{18..152}`` or ``vgg{11..19}_bn`` with
``weights=None`` (nothing is downloaded), so the ``state_dict`` keys and shapes are torchvision's
and torchvision checkpoints load into these models and vice versa. torchvision is imported on the
first build, not with this module: the CLI's start-up does not pay for it. ``in_channels`` other
than 3 replaces the first conv by one with that many input channels (same keys, weight shape
``(64, in_channels, k, k)``), initialised as torchvision initialises its convs.

Biases are torchvision's: VGG zeroes every conv and linear bias, ResNet's only bias (``fc``) keeps
PyTorch's default draw. ``force_cli.models.init`` then re-initialises every Conv and Linear weight,
as the paper's code re-initialises torchvision's models. torchvision's own init draws from the
global RNG first, so a seed gives other weights than force-cli's earlier hand-written copies did.

torchvision's ReLUs are in place, which GraSP's double backward (and every gradient criterion)
tolerates: autograd raises rather than use a tensor an in-place op overwrote, and none of these
ReLUs overwrites one that a backward needs. The scores are bit-identical to those of the same
network with ``inplace=False`` ReLUs, and GraSP's Hessian-gradient product matches forward-over-
reverse differentiation (``tests/test_models.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from force_cli.errors import DependencyError


def torchvision_models(model: str):
    """``torchvision.models``, imported on first use; a broken install becomes a one-line DependencyError."""
    try:
        import torchvision.models
    except Exception as err:  # ImportError, or RuntimeError from a torchvision built for another torch
        first = " ".join(str(err).split())[:200] or type(err).__name__
        raise DependencyError(
            f"torchvision cannot be imported ({first}); model '{model}' is torchvision's: install the "
            f"torchvision build matching torch {torch.__version__} (pip install torchvision)"
        ) from None
    return torchvision.models


def _first_conv_for(model: nn.Module, path: str, in_channels: int) -> nn.Module:
    """Replace the conv at ``path`` (torchvision's, for RGB) by one taking ``in_channels``, if other than 3."""
    if in_channels == 3:
        return model
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = getattr(parent, attr)
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    bias=old.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # torchvision's conv init
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    setattr(parent, attr, new)
    return model


def _resnet(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    return _first_conv_for(getattr(torchvision_models(arch), arch)(weights=None, num_classes=num_classes),
                           "conv1", in_channels)


def _vgg_bn(arch: str, num_classes: int, in_channels: int) -> nn.Module:
    return _first_conv_for(getattr(torchvision_models(arch), f"{arch}_bn")(weights=None, num_classes=num_classes),
                           "features.0", in_channels)


def resnet18(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _resnet("resnet18", num_classes, in_channels)


def resnet34(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _resnet("resnet34", num_classes, in_channels)


def resnet50(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _resnet("resnet50", num_classes, in_channels)


def resnet101(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _resnet("resnet101", num_classes, in_channels)


def resnet152(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _resnet("resnet152", num_classes, in_channels)


def vgg11(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _vgg_bn("vgg11", num_classes, in_channels)


def vgg13(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _vgg_bn("vgg13", num_classes, in_channels)


def vgg16(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _vgg_bn("vgg16", num_classes, in_channels)


def vgg19(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _vgg_bn("vgg19", num_classes, in_channels)
