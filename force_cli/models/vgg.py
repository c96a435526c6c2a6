"""CIFAR VGG with batch norm, as in the FORCE and GraSP code.

Each cfg is the standard VGG one with its fifth max-pool replaced by a 2x2 average pool: 3x3
convs (bias=False) + BN + ReLU, four 2x2 max-pools, then the average pool and ONE Linear(512, C).
The average pool is global (adaptive to 1x1), which is exactly GraSP's AvgPool2d(2) at 32x32 and
its AvgPool2d(4) at 64x64, so the classifier always sees 512 features. Inputs must still leave at
least a 2x2 map for that pool, as in the paper's cfg: ``sizes.cifar_vgg_min_image_size`` works it
out (32). The cfgs live, torch-free, in ``models/sizes.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from force_cli.models.sizes import CIFAR_VGG_CFGS as CFGS


def conv_stack(cfg: tuple, in_channels: int) -> tuple[nn.Sequential, int]:
    """3x3 conv (no bias, as in the paper's code) + BN + ReLU per number in ``cfg``, a 2x2 max-pool
    per "M"; returns it and its output channels. The layer indices, hence the ``state_dict`` keys,
    follow the cfg alone."""
    layers: list[nn.Module] = []
    channels = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
            channels = v
    return nn.Sequential(*layers), channels


class CifarVGG(nn.Module):
    """``feature`` (conv/BN/ReLU/max-pool stack), global average pool, one Linear ``classifier``."""

    def __init__(self, cfg: tuple, num_classes: int, in_channels: int):
        super().__init__()
        self.feature, channels = conv_stack(cfg, in_channels)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        nn.init.zeros_(self.classifier.bias)  # the paper's VGG zeroes it; the --init scheme never touches biases

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.feature(x)), 1))


def vgg11(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return CifarVGG(CFGS["vgg11"], num_classes, in_channels)


def vgg13(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return CifarVGG(CFGS["vgg13"], num_classes, in_channels)


def vgg16(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return CifarVGG(CFGS["vgg16"], num_classes, in_channels)


def vgg19(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return CifarVGG(CFGS["vgg19"], num_classes, in_channels)
