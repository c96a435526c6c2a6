"""CIFAR-10 / CIFAR-100: the official *binary* batches, read with numpy.

Hand-written on purpose: torchvision's ``CIFAR10``/``CIFAR100`` read the *python* version of the
batches, which are pickles (``pickle.load`` of a downloaded file); the binary version is plain
bytes, one label byte (two for CIFAR-100) and 3072 pixel bytes per image.

Layout under the data directory::

    cifar10/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin
    cifar100/cifar-100-binary/{train,test}.bin
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from force_cli.data import download
from force_cli.data.arrays import array_parts, check_labels
from force_cli.data.download import FILE_ERRORS, one_line
from force_cli.data.transforms import tensor_transforms
from force_cli.data.types import DatasetInfo, Parts
from force_cli.errors import DataError, ForceError


@dataclass(frozen=True)
class CifarFormat:
    title: str
    folder: str  # inside the dataset root
    archive: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_bytes: int  # label bytes before the 3072 pixel bytes of each record
    label_offset: int  # which of them is the label used


CIFAR10 = CifarFormat(
    "CIFAR-10", "cifar-10-batches-bin", "cifar-10-binary.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530",
    tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), 1, 0,
)
CIFAR100 = CifarFormat(
    "CIFAR-100", "cifar-100-binary", "cifar-100-binary.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8",
    ("train.bin",), ("test.bin",), 2, 1,  # coarse label, fine label: use the fine one
)


def read_cifar_binary(paths: list[Path], fmt: CifarFormat, num_classes: int):
    record = fmt.label_bytes + 3 * 32 * 32
    chunks = []
    for path in paths:
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise DataError(
                f"{path} is not a {fmt.title} binary batch ({raw.size} bytes, not a multiple of "
                f"{record}); delete {path.parent} and download {fmt.title} again"
            )
        chunks.append(raw.reshape(-1, record))
    table = np.concatenate(chunks)
    labels = table[:, fmt.label_offset].astype(np.int64)
    check_labels(labels, num_classes, paths[0].parent, fmt.title)
    images = table[:, fmt.label_bytes:].reshape(-1, 3, 32, 32)
    return images, labels


def ensure_cifar(root: Path, fmt: CifarFormat, download_missing: bool) -> Path:
    """The folder of batch files, extracting a local archive or downloading when needed."""
    folder = root / fmt.folder
    needed = fmt.train_files + fmt.test_files
    if all((folder / f).is_file() for f in needed):
        return folder
    archive = root / fmt.archive
    if archive.is_file() and download.md5(archive) == fmt.md5:  # a copied-over archive: just extract it
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(root, filter="data")
        except FILE_ERRORS as err:
            raise DataError(
                f"cannot extract {archive} ({one_line(err)}); delete it and download "
                f"{fmt.title} again"
            ) from err
    elif not download_missing:
        raise DataError(
            f"{fmt.title} not found in {folder} and --no-download was given; download it there "
            f"(or put {fmt.archive} in {root}) or drop --no-download"
        )
    else:
        download.import_torchvision()  # fail on a broken torchvision before creating any folder
        download.make_dir(root)
        try:
            download.fetch(fmt.url, root, md5=fmt.md5)
        except ForceError:
            raise
        except FILE_ERRORS as err:
            raise DataError(
                f"could not download {fmt.title} into {root} ({one_line(err)}); check the network "
                f"connection, or put {fmt.archive} from {fmt.url} in {root} yourself"
            ) from err
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{fmt.title} in {folder} is incomplete (missing {', '.join(missing)}); delete "
            f"{folder} and download it again"
        )
    return folder


def cifar_builder(fmt: CifarFormat):
    def build(root: Path, info: DatasetInfo, download_missing: bool, augment: bool) -> Parts:
        folder = ensure_cifar(root, fmt, download_missing)
        try:
            x, y = read_cifar_binary([folder / f for f in fmt.train_files], fmt, info.num_classes)
            tx, ty = read_cifar_binary([folder / f for f in fmt.test_files], fmt, info.num_classes)
        except ForceError:
            raise
        except FILE_ERRORS as err:
            raise DataError(
                f"cannot read {fmt.title} from {folder} ({one_line(err)}); delete that folder "
                f"and download it again"
            ) from err
        train_tf, test_tf = tensor_transforms(info, crop=True, flip=True, augment=augment)
        return array_parts(x, y, tx, ty, train_tf, test_tf)

    return build


build_cifar10 = cifar_builder(CIFAR10)
build_cifar100 = cifar_builder(CIFAR100)
