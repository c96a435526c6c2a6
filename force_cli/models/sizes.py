"""The architectures' shape tables and the smallest input each accepts, without torch.

The model catalog (``models/catalog.py``) states every model's minimum image size, and
``--help`` and the size refusals need it before torch is loaded; the architectures
(``vgg.py``, ``imagenet.py``, ``lenet.py``) build from these same tables, so the two never drift.
"""

from __future__ import annotations

from types import MappingProxyType

#: The CIFAR VGGs (``vgg.py``): the standard cfgs with the fifth max-pool replaced by a final
#: average pool; a number is a 3x3 conv's output channels, "M" a 2x2 max-pool.
CIFAR_VGG_CFGS = MappingProxyType({
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    "vgg19": (
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512,
    ),
})
FINAL_POOL = 2  # side of the map the CIFAR VGG's final average pool needs (the paper's AvgPool2d(2))

# torchvision's VGG cfgs (A, B, D, E) are the CIFAR ones plus the fifth max-pool the CIFAR variant
# replaces; kept here so the catalog knows minimum sizes without importing torchvision.
IMAGENET_VGG_CFGS = MappingProxyType({name: cfg + ("M",) for name, cfg in CIFAR_VGG_CFGS.items()})

CIFAR_RESNET_MIN_IMAGE_SIZE = 1  # stride-2 3x3 convs with padding 1 never reach 0
IMAGENET_RESNET_MIN_IMAGE_SIZE = 1  # strided convs/pools with padding never reach 0; adaptive pool at the end
LENET300_MIN_IMAGE_SIZE = 1  # it flattens the image


def cifar_vgg_min_image_size(cfg: tuple) -> int:
    """Smallest input side that leaves a FINAL_POOL x FINAL_POOL map after the max-pools."""
    return FINAL_POOL * 2 ** sum(v == "M" for v in cfg)


def imagenet_vgg_min_image_size(cfg: tuple) -> int:
    """Smallest input side whose 2x2 max-pools all leave at least a 1x1 map (32 for five)."""
    return 2 ** sum(v == "M" for v in cfg)


def lenet5_feature_size(image_size: int) -> int:
    """Side of LeNet-5's map after conv(5, pad 2), pool 2, conv(5), pool 2; < 1 means unusable."""
    return (image_size // 2 - 4) // 2


def lenet5_min_image_size() -> int:
    """Smallest input side for which ``lenet5_feature_size`` is at least 1 (12)."""
    size = 1
    while lenet5_feature_size(size) < 1:
        size += 1
    return size
