"""torchvision's ImageNet ResNets and VGG-bn, for the ``imagenet`` and ``tiny-imagenet`` datasets.

These are module-for-module copies of ``torchvision.models.resnet{18..152}`` and
``vgg{11..19}_bn`` (weights=None): same layers, same ``state_dict`` keys and shapes, so
torchvision checkpoints load into them and vice versa. We do not import torchvision here
because its PyPI wheels are built against CUDA torch and fail to import on a CPU-only torch
(``operator torchvision::nms does not exist``); the test suite compares against torchvision
wherever it does import. Never downloads weights. ``in_channels`` sets the first conv's input
channels (what replacing torchvision's first conv would give). Two deliberate differences that
change no weights: ReLUs are not in place (GraSP needs double backward through the net), and of
torchvision's own init only the biases' is applied (VGG zeroes its biases, ResNet keeps PyTorch's
default): ``force_cli.models.init`` re-initialises the weights of every model, as the paper's
code re-initialises torchvision's.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
from torch import nn

from force_cli.models.vgg import CFGS as CIFAR_VGG_CFGS
from force_cli.models.vgg import conv_stack

RESNET_MIN_IMAGE_SIZE = 1  # strided convs/pools with padding never reach 0; adaptive pool at the end
# torchvision's VGG cfgs are the CIFAR ones with the fifth max-pool the CIFAR variant replaces.
VGG_CFGS = MappingProxyType({name: cfg + ("M",) for name, cfg in CIFAR_VGG_CFGS.items()})


def vgg_min_image_size(cfg: tuple) -> int:
    """Smallest input side whose 2x2 max-pools all leave at least a 1x1 map (32 for five)."""
    return 2 ** sum(v == "M" for v in cfg)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """7x7/2 stem, 3x3/2 max-pool, four stages (64..512 planes), global average pool, fc."""

    def __init__(self, block, layers, num_classes: int, in_channels: int):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes: int, count: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGG(nn.Module):
    """``features`` (conv+bias/BN/ReLU/max-pool), 7x7 adaptive average pool, 4096-4096-C classifier."""

    def __init__(self, cfg: tuple, num_classes: int, in_channels: int):
        super().__init__()
        self.features, _ = conv_stack(cfg, in_channels, bias=True)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=False), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(inplace=False), nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )
        for module in self.modules():  # torchvision's VGG zeroes every conv and linear bias
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def resnet18(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def resnet34(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels)


def resnet50(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)


def resnet101(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes, in_channels)


def resnet152(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return ResNet(Bottleneck, (3, 8, 36, 3), num_classes, in_channels)


def vgg11(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return VGG(VGG_CFGS["vgg11"], num_classes, in_channels)


def vgg13(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return VGG(VGG_CFGS["vgg13"], num_classes, in_channels)


def vgg16(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return VGG(VGG_CFGS["vgg16"], num_classes, in_channels)


def vgg19(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return VGG(VGG_CFGS["vgg19"], num_classes, in_channels)
