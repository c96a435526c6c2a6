"""MNIST / Fashion-MNIST: idx files in torchvision's folder layout, from torchvision's mirrors.

Layout under the data directory::

    mnist/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte        (or the same names + .gz)
    fashion-mnist/FashionMNIST/raw/...
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np

from force_cli.data import download
from force_cli.data.arrays import array_parts, check_labels
from force_cli.data.download import FILE_ERRORS, one_line
from force_cli.data.transforms import tensor_transforms
from force_cli.data.types import DatasetInfo, Parts
from force_cli.errors import DataError, ForceError

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (plain, or ``path.gz``) as an array."""
    if path.is_file():
        data = path.read_bytes()
    else:
        with gzip.open(path.with_name(path.name + ".gz"), "rb") as f:
            data = f.read()
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise DataError(f"{path} is not an idx file of unsigned bytes; delete it and download it again")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    array = np.frombuffer(data, dtype=np.uint8, offset=header)
    if array.size != math.prod(dims):
        raise DataError(f"{path} is truncated ({array.size} of {math.prod(dims)} values); "
                        f"delete it and download it again")
    return array.reshape(dims)


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
        try:
            arrays = {split: (read_idx(raw / images), read_idx(raw / labels))
                      for split, (images, labels) in MNIST_FILES.items()}
        except ForceError:
            raise
        except FILE_ERRORS as err:
            raise DataError(
                f"cannot read {title} from {raw} ({one_line(err)}); delete that folder and "
                f"download it again"
            ) from err
        for split, (images, labels) in arrays.items():
            if images.ndim != 3 or len(images) != len(labels):
                raise DataError(f"{title} {split} files in {raw} do not match (images "
                                f"{images.shape}, labels {labels.shape}); delete them and download again")
            check_labels(labels, info.num_classes, raw, title)
        (x, y), (tx, ty) = arrays["train"], arrays["test"]
        train_tf, test_tf = tensor_transforms(info, crop=False, flip=False, augment=augment)
        return array_parts(x[:, None], y, tx[:, None], ty, train_tf, test_tf)

    return build
