"""SVHN: the official MATLAB files, read with scipy (a MAT file holds arrays, nothing pickled).

Layout under the data directory (torchvision's)::

    svhn/{train,test}_32x32.mat

The reading is torchvision's ``SVHN`` line for line (``scipy.io.loadmat``, label 10 -> 0,
(H, W, C, N) -> (N, C, H, W)), and the download uses its URLs and MD5s, but not the class itself:
it computes the MD5 of the whole file on every load (182 MB for train) and refuses any file but
the official one with "Dataset not found or corrupted", without saying which file. scipy comes
with scikit-learn, which ``digits`` needs anyway.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from force_cli.data import download
from force_cli.data.arrays import array_parts
from force_cli.data.download import FILE_ERRORS, one_line
from force_cli.data.transforms import tensor_transforms
from force_cli.data.types import DatasetInfo, Parts
from force_cli.errors import DataError, ForceError


def build_svhn(root: Path, info: DatasetInfo, download_missing: bool, augment: bool) -> Parts:
    files = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
    missing = [s for s, f in files.items() if not (root / f).is_file()]
    if missing and not download_missing:
        raise DataError(
            f"SVHN not found in {root} (no {', '.join(files[s] for s in missing)}) and --no-download "
            f"was given; download it there or drop --no-download"
        )
    try:
        import scipy.io
    except ImportError as err:
        raise DataError("reading SVHN needs scipy, which is not installed; pip install scipy") from err
    if missing:
        split_list = download.import_torchvision().datasets.SVHN.split_list
        download.make_dir(root)
        for split in missing:
            url, filename, md5 = split_list[split]
            try:
                download.fetch(url, root, md5=md5, filename=filename, extract=False)
            except ForceError:
                raise
            except FILE_ERRORS as err:
                raise DataError(
                    f"could not download SVHN into {root} ({one_line(err)}); check the network "
                    f"connection, or put {filename} from {url} there yourself"
                ) from err
    arrays = {}
    for split, filename in files.items():
        path = root / filename
        try:
            mat = scipy.io.loadmat(str(path))
            images, labels = mat["X"], mat["y"].reshape(-1)
        except Exception as err:  # scipy raises MatReadError, IndexError, ... on a corrupt file
            raise DataError(
                f"cannot read {path} ({one_line(err)}); delete it and download SVHN again"
            ) from err
        if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != len(labels):
            raise DataError(f"{path} does not hold 32x32 RGB SVHN images; delete it and download SVHN again")
        labels = labels.astype(np.int64) % 10  # SVHN writes the digit 0 as label 10
        arrays[split] = (np.transpose(images, (3, 2, 0, 1)), labels)  # (H, W, C, N) -> (N, C, H, W)
    (x, y), (tx, ty) = arrays["train"], arrays["test"]
    train_tf, test_tf = tensor_transforms(info, crop=True, flip=False, augment=augment)
    return array_parts(x, y, tx, ty, train_tf, test_tf)
