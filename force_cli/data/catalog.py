"""The dataset registry: name -> shape, normalisation, folder, reader and training defaults.

``DATASETS`` is the single registry: adding a dataset is one ``DatasetSpec`` here (and its reader
in ``readers/``). The CLI's choices, help texts, "unknown dataset" error and `force train`'s
defaults all come from it. Torch-free (readers are named, imported when a dataset is built), so
that ``--help`` answers at once.
"""

from __future__ import annotations

from force_cli.data.names import canonical_name
from force_cli.data.types import DatasetInfo, DatasetSpec, TrainDefaults
from force_cli.errors import UnknownNameError

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

#: The paper's code for CIFAR (naver/force, experiments.py): SGD, lr 0.1, momentum 0.9, weight
#: decay 5e-4, batch 128, 350 epochs, lr x0.1 after epochs 150 and 250, 10% held out for validation.
PAPER_CIFAR = TrainDefaults(epochs=350, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4,
                            lr_schedule="multistep", milestones=(150, 250), gamma=0.1, batch_size=128,
                            val_fraction=0.1)
#: The paper's ImageNet script (PyTorch's example): 90 epochs, batch 256, wd 1e-4, x0.1 every 30.
_IMAGENET = PAPER_CIFAR.but(epochs=90, milestones=(30, 60), weight_decay=1e-4, batch_size=256, val_fraction=0.0)
#: MNIST-like (not in the paper): the same optimizer, 40 epochs, x0.1 after 20 and 30.
_MNIST = PAPER_CIFAR.but(epochs=40, milestones=(20, 30))


def _info(name, classes, channels, size, mean, std, *, imagenet_style=False, downloadable=False):
    return DatasetInfo(name, classes, channels, size, tuple(mean), tuple(std), imagenet_style, downloadable)


DATASETS: dict[str, DatasetSpec] = {
    spec.info.name: spec
    for spec in [
        DatasetSpec(_info("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                          downloadable=True),
                    "CIFAR-10, 32x32 RGB, 10 classes (binary version, downloaded)", "cifar10",
                    "readers.cifar:build_cifar10", PAPER_CIFAR),
        DatasetSpec(_info("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                          downloadable=True),
                    "CIFAR-100, 32x32 RGB, 100 fine classes (binary version, downloaded)", "cifar100",
                    "readers.cifar:build_cifar100", PAPER_CIFAR),
        DatasetSpec(_info("mnist", 10, 1, 28, (0.1307,), (0.3081,), downloadable=True),
                    "MNIST handwritten digits, 28x28 grayscale (downloaded)", "mnist",
                    "readers.mnist:build_mnist", _MNIST),
        DatasetSpec(_info("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), downloadable=True),
                    "Fashion-MNIST, 28x28 grayscale (downloaded)", "fashion-mnist",
                    "readers.mnist:build_fashion_mnist", _MNIST),
        DatasetSpec(_info("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                          downloadable=True),
                    "SVHN house numbers, 32x32 RGB (downloaded; needs scipy)", "svhn",
                    "readers.svhn:build_svhn", PAPER_CIFAR),
        # imagenet_style=False: the paper trains its CIFAR networks (CIFAR VGG, CIFAR-stem ResNet) on
        # 64x64 Tiny-ImageNet, not the ImageNet ones (VGG-19-bn would have 140 M weights, not 20 M).
        # Its code trains 300 epochs, x0.1 after 150 and 225, with no validation split.
        DatasetSpec(_info("tiny-imagenet", 200, 3, 64, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
                    "Tiny-ImageNet, 64x64 RGB, 200 classes (place it in DATA_DIR/tiny-imagenet-200)",
                    "tiny-imagenet-200", "readers.folders:build_tiny_imagenet",
                    PAPER_CIFAR.but(epochs=300, milestones=(150, 225), val_fraction=0.0)),
        DatasetSpec(_info("imagenet", 1000, 3, 224, _IMAGENET_MEAN, _IMAGENET_STD, imagenet_style=True),
                    "ImageNet ILSVRC-2012 (place it in DATA_DIR/imagenet/{train,val}/<class>/)",
                    "imagenet", "readers.folders:build_imagefolder", _IMAGENET),
        DatasetSpec(_info("imagefolder", 0, 3, 224, _IMAGENET_MEAN, _IMAGENET_STD, imagenet_style=True),
                    "any DATA_DIR/{train,val}/<class>/<image> tree, 224x224 ImageNet-style transforms",
                    "", "readers.folders:build_imagefolder", _IMAGENET),
        # digits (1293 training images of 8x8 after the 10% validation split): 100 epochs of 41
        # batches of 32, x0.1 after 50 and 75; a 99%-sparse LeNet-300-100 trains in about 4 s on a CPU.
        DatasetSpec(_info("digits", 10, 1, 8, (0.3053,), (0.3760,)),
                    "scikit-learn's bundled 8x8 handwritten digits (1797 images, no download)", "",
                    "readers.digits:build_digits", PAPER_CIFAR.but(epochs=100, batch_size=32, milestones=(50, 75))),
        # synthetic (smoke tests, benchmarks): 10 epochs, x0.1 after 5 and 8.
        DatasetSpec(_info("synthetic", 10, 3, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
                    "deterministic learnable random 3x32x32 tensors, 10 classes (smoke tests, benchmarks)",
                    "", "readers.synthetic:build_synthetic", PAPER_CIFAR.but(epochs=10, milestones=(5, 8))),
    ]
}

#: The registry's names, in its order (for help texts and errors).
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def dataset_names() -> list[str]:
    """Every registered dataset name, sorted."""
    return sorted(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The registry entry of ``name`` (any spelling ``canonical_name`` accepts), or UnknownNameError."""
    spec = DATASETS.get(canonical_name(name))
    if spec is None:
        raise UnknownNameError("dataset", name, DATASETS)
    return spec


def train_defaults(name: str) -> TrainDefaults:
    """The training defaults of dataset ``name``; an unknown name is an error, never another's defaults."""
    return get_spec(name).train
