"""CIFAR-style ResNets, the architectures the FORCE paper prunes on CIFAR and Tiny-ImageNet.

resnet18..resnet152 follow the paper's code (kuangliu's pytorch-cifar): a 3x3 stride-1 stem with
64 planes and no max-pool, so 32x32 images keep enough resolution; four stages with strides
1, 2, 2, 2; global average pool; one Linear named ``fc`` as in the FORCE code.

resnet110 is He et al.'s CIFAR ResNet (6n+2 layers, n=18, 16/32/64 planes, three stages) with
their parameter-free "option A" shortcut (stride-2 subsampling plus zero-padded channels).
The FORCE code's own ``resnet110`` is a Bottleneck [3, 4, 26, 3] net; we build the classic one.

Every shape works for any image size >= 1 (stride-2 3x3 convs with padding 1 never reach 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convs; a 1x1 projection shortcut when the shape changes."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = self.make_shortcut(in_planes, planes * self.expansion, stride)

    @staticmethod
    def make_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
        return _projection(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand by 4; projection shortcut when the shape changes."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _projection(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """Identity (empty Sequential) or 1x1 conv + BN, as in the paper's code (same state_dict keys)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class CifarResNet(nn.Module):
    """Stem (3x3, 64 planes, stride 1, no max-pool), four stages, global average pool, fc."""

    def __init__(self, block, num_blocks, num_classes: int, in_channels: int):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes: int, count: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (count - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.avgpool(out), 1))


class PadShortcut(nn.Module):
    """He et al.'s option A: subsample by the stride and zero-pad the new channels (no weights)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.stride, self.extra = stride, out_planes - in_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class HeBasicBlock(BasicBlock):
    """BasicBlock of He et al.'s CIFAR ResNets: the parameter-free option-A shortcut when the shape changes."""

    @staticmethod
    def make_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
        if stride == 1 and in_planes == out_planes:
            return nn.Sequential()
        return PadShortcut(in_planes, out_planes, stride)


class HeResNet(nn.Module):
    """6n+2-layer CIFAR ResNet: 3x3 stem with 16 planes, stages of n blocks at 16/32/64 planes."""

    def __init__(self, n: int, num_classes: int, in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(HeBasicBlock(in_planes, planes, s))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(self.avgpool(out), 1))


def resnet18(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return CifarResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def resnet34(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return CifarResNet(BasicBlock, (3, 4, 6, 3), num_classes, in_channels)


def resnet50(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return CifarResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)


def resnet101(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return CifarResNet(Bottleneck, (3, 4, 23, 3), num_classes, in_channels)


def resnet152(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return CifarResNet(Bottleneck, (3, 8, 36, 3), num_classes, in_channels)


def resnet110(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return HeResNet(18, num_classes, in_channels)
