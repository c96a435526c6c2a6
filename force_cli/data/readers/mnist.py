"""MNIST / Fashion-MNIST: torchvision's idx reader, folder layout and mirrors.

Layout under the data directory (torchvision's)::

    mnist/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte        (or the same names + .gz)
    fashion-mnist/FashionMNIST/raw/...

The files are parsed by torchvision's ``read_image_file`` / ``read_label_file``, but not through
its ``MNIST`` class: that class first looks for a legacy ``processed/*.pt`` cache and loads it
with ``torch.load`` (unpickling), and reports every problem as "Dataset not found". A ``.gz``
without its extracted file (torchvision's download leaves both) is extracted next to it,
atomically, since torchvision's reader takes only plain files.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from force_cli.atomic import write_atomic
from force_cli.data import download
from force_cli.data.arrays import array_parts, check_labels
from force_cli.data.download import FILE_ERRORS, one_line
from force_cli.data.transforms import tensor_transforms
from force_cli.data.types import DatasetInfo, Parts
from force_cli.errors import DataError, OutputError

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _extract_gz(path: Path, title: str) -> None:
    """``path.gz`` -> ``path``, complete or not at all."""
    gz = path.with_name(path.name + ".gz")
    try:
        with gzip.open(gz, "rb") as f:
            data = f.read()
    except FILE_ERRORS as err:
        raise DataError(f"cannot read {gz} ({one_line(err)}); delete it and download {title} again") from err
    try:
        write_atomic(path, data, f"{title} file")
    except OutputError as err:
        raise DataError(f"cannot extract {gz} ({err}); extract it there yourself (gunzip -k) or pass "
                        f"--data-dir with a writable copy") from err


def _read(reader, path: Path, title: str) -> np.ndarray:
    """One idx file through torchvision's reader; whatever it raises becomes a one-line DataError."""
    try:
        return reader(str(path)).numpy()
    except (AssertionError, KeyError, TypeError, *FILE_ERRORS) as err:  # its header checks are asserts
        reason = "bad header" if isinstance(err, (AssertionError, KeyError)) else one_line(err)
        raise DataError(f"{path} is not a valid idx file of unsigned bytes ({reason}); delete it and "
                        f"download {title} again") from err


def mnist_builder(title: str, tv_class: str):
    def build(root: Path, info: DatasetInfo, download_missing: bool, augment: bool) -> Parts:
        raw = root / tv_class / "raw"
        names = [n for pair in MNIST_FILES.values() for n in pair]

        def present(n: str) -> bool:
            return (raw / n).is_file() or (raw / f"{n}.gz").is_file()

        if not all(map(present, names)):
            if not download_missing:
                raise DataError(
                    f"{title} not found in {raw} and --no-download was given; download it there "
                    f"or drop --no-download"
                )
            cls = getattr(download.import_torchvision().datasets, tv_class)
            download.make_dir(raw)
            for filename, md5 in cls.resources:
                if present(filename.removesuffix(".gz")):
                    continue
                errors = []
                for mirror in cls.mirrors:
                    try:
                        download.fetch(f"{mirror}{filename}", raw, md5=md5, filename=filename)
                        break
                    except FILE_ERRORS as err:
                        errors.append(one_line(err))
                else:
                    raise DataError(
                        f"could not download {title} into {raw} ({errors[-1] if errors else 'no mirror'}); "
                        f"check the network connection, or put the four idx files there yourself"
                    )
        download.import_torchvision()  # a broken install: one line, not a traceback
        from torchvision.datasets.mnist import read_image_file, read_label_file

        arrays = {}
        for split, (images, labels) in MNIST_FILES.items():
            for name in (images, labels):
                if not (raw / name).is_file():
                    _extract_gz(raw / name, title)
            arrays[split] = (_read(read_image_file, raw / images, title), _read(read_label_file, raw / labels, title))
        for split, (images, labels) in arrays.items():
            if len(images) != len(labels):
                raise DataError(f"{title} {split} files in {raw} do not match (images "
                                f"{images.shape}, labels {labels.shape}); delete them and download again")
            check_labels(labels, info.num_classes, raw, title)
        (x, y), (tx, ty) = arrays["train"], arrays["test"]
        train_tf, test_tf = tensor_transforms(info, crop=False, flip=False, augment=augment)
        return array_parts(x[:, None], y, tx[:, None], ty, train_tf, test_tf)

    return build


build_mnist = mnist_builder("MNIST", "MNIST")
build_fashion_mnist = mnist_builder("Fashion-MNIST", "FashionMNIST")
