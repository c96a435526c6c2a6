"""LeNets: the small fully connected and convolutional nets of the pruning literature.

``LeNet300`` (LeNet-300-100) flattens the image, so it takes any input size. ``LeNet5`` (conv
6@5x5 pad 2, max-pool 2, conv 16@5x5, max-pool 2, then 120-84-C) sizes its first Linear from the
image size; inputs too small to leave a 1x1 map after the second max-pool are refused up front.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from force_cli.models.sizes import lenet5_feature_size


class LeNet300(nn.Module):
    """LeNet-300-100: Flatten, Linear(C*H*W, 300), ReLU, Linear(300, 100), ReLU, Linear(100, classes)."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * image_size * image_size, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(F.relu(self.fc2(x)))


class LeNet5(nn.Module):
    """LeNet-5 with a padded first conv, so 28x28 digits give the classic 16x5x5 features."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int):
        super().__init__()
        side = lenet5_feature_size(image_size)
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(F.relu(self.fc2(x)))


def lenet300(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return LeNet300(num_classes, in_channels, image_size)


def lenet5(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return LeNet5(num_classes, in_channels, image_size)
