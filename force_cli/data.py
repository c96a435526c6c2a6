"""Dataset factory: dataset name -> train/val/test datasets, normalisation, augmentation, loaders.

``DATASETS`` is the single registry; the CLI's choices, help text and "unknown dataset" error all
come from it.  Every dataset lives in its own folder under the data directory (``--data-dir``,
default ``$FORCE_DATA`` or ``~/.cache/force-cli/data``)::

    cifar10/cifar-10-batches-bin/{data_batch_1..5,test_batch}.bin   (official *binary* version)
    cifar100/cifar-100-binary/{train,test}.bin                      (official *binary* version)
    mnist/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte    (torchvision's layout)
    fashion-mnist/FashionMNIST/raw/...                               (same file names)
    svhn/{train,test}_32x32.mat
    tiny-imagenet-200/{train,val}/                                   (original or ImageFolder val)
    imagenet/{train,val}/<class>/*.JPEG
    imagefolder: the data directory itself holds train/<class>/ and val/<class>/ (or test/)

Security: nothing is ever unpickled.  CIFAR is read from the binary batches (not torchvision's
pickled python batches), MNIST from its idx files, SVHN from MATLAB files with scipy.
torchvision is imported lazily, only to download files and for the ImageNet-style transforms, so
``digits``, ``synthetic`` and the already-downloaded 32x32 datasets work without it.

Randomness: augmentation draws from torch's global RNG, like torchvision transforms, so
``DataLoader`` workers (seeded from the loader's generator) are reproducible.  ``BatchStream``
keeps its own RNG state, so a stream is reproducible from its seed alone and never consumes the
caller's global RNG.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import math
import os
import struct
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, TensorDataset

from .errors import ConfigError, DataError, ForceError, UnknownNameError

# --------------------------------------------------------------------------------------------
# Public data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, available without decoding any image."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    imagenet_style: bool  # True: the model registry builds torchvision's ImageNet architectures (ImageNet, imagefolder)
    downloadable: bool


@dataclass
class DataSplits:
    """The datasets of one run. ``train`` and ``train_eval`` hold the same indices."""

    info: DatasetInfo
    train: Dataset  # with training augmentation (unless augment=False)
    val: Dataset | None  # held out of the training set, no augmentation; None if val_fraction == 0
    test: Dataset  # no augmentation
    train_eval: Dataset  # the training indices without augmentation (``eval --split train``)


class _Parts(NamedTuple):
    """What a dataset builder returns: full training set twice (augmented / plain, same order)."""

    train_aug: Dataset
    train_plain: Dataset
    test: Dataset


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry. ``folder`` is the dataset's folder under the data directory."""

    info: DatasetInfo
    summary: str
    folder: str
    build: Callable[[Path, DatasetInfo, bool, bool], _Parts]  # (root, info, download, augment)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Errors that torchvision, numpy, scipy, PIL and the OS raise for missing or corrupt files.
_FILE_ERRORS = (OSError, RuntimeError, ValueError, EOFError, tarfile.TarError, zipfile.BadZipFile)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _torchvision():
    """Import torchvision lazily; a broken install becomes a one-line DataError."""
    try:
        import torchvision
        import torchvision.datasets.utils  # noqa: F401
        import torchvision.transforms.v2  # noqa: F401
    except Exception as err:  # a torchvision built for another torch raises RuntimeError
        raise DataError(
            f"torchvision cannot be imported ({_one_line(err)}); install the torchvision build "
            f"matching torch {torch.__version__}"
        ) from err
    return torchvision


def _download_archive(url: str, root: Path, *, md5: str, filename: str | None = None,
                      extract: bool = True) -> None:
    """Download (and extract) one archive with torchvision's helpers; its prints go to stderr."""
    utils = _torchvision().datasets.utils
    with contextlib.redirect_stdout(sys.stderr):
        if extract:
            utils.download_and_extract_archive(url, download_root=str(root), filename=filename, md5=md5)
        else:
            utils.download_url(url, str(root), filename=filename, md5=md5)


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(
            f"cannot create {path} ({_one_line(err)}); pass --data-dir with a writable folder"
        ) from err


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Tensor transforms (uint8 CHW in, normalised float32 CHW out); no torchvision needed
# --------------------------------------------------------------------------------------------


class _Compose:
    def __init__(self, *steps):
        self.steps = steps

    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x

    def batch(self, x: Tensor) -> Tensor:
        """The same as ``torch.stack([self(xi) for xi in x])``, bit for bit, as whole-batch tensor
        operations: the random parameters are drawn sample by sample in the per-sample order (so
        torch's RNG advances exactly as it does per sample), then applied to the whole batch."""
        shape = x.shape[1:]
        params = [[step.draw(shape) for step in self.steps] for _ in range(len(x))]
        for k, step in enumerate(self.steps):
            x = step.apply(x, [p[k] for p in params])
            shape = x.shape[1:]
        return x


class _RandomCrop:
    """torchvision's ``RandomCrop(size, padding)``: zero padding, then a uniform random crop."""

    def __init__(self, size: int, padding: int):
        self.size, self.padding = size, padding

    def __call__(self, x: Tensor) -> Tensor:
        i, j = self.draw(x.shape)
        return self._crop(self._pad(x), i, j)

    def _pad(self, x: Tensor) -> Tensor:
        p = self.padding
        return torch.nn.functional.pad(x, (p, p, p, p)) if p else x

    def _crop(self, x: Tensor, i: int, j: int) -> Tensor:
        return x[..., i:i + self.size, j:j + self.size]

    def draw(self, shape) -> tuple[int, int]:
        h, w = shape[-2] + 2 * self.padding, shape[-1] + 2 * self.padding
        i = int(torch.randint(0, h - self.size + 1, (1,)))
        j = int(torch.randint(0, w - self.size + 1, (1,)))
        return i, j

    def apply(self, x: Tensor, offsets: list[tuple[int, int]]) -> Tensor:
        x = self._pad(x)  # slicing views then one stack: much faster than an advanced-index gather
        return torch.stack([self._crop(xi, i, j) for xi, (i, j) in zip(x, offsets)])


class _RandomHorizontalFlip:
    def __call__(self, x: Tensor) -> Tensor:
        return x.flip(-1) if self.draw(x.shape) else x

    def draw(self, shape) -> bool:
        return float(torch.rand(1)) < 0.5

    def apply(self, x: Tensor, flips: list[bool]) -> Tensor:
        return torch.where(torch.tensor(flips).view(-1, 1, 1, 1), x.flip(-1), x)


class _Normalize:
    """uint8 [0, 255] -> float32 [0, 1] -> (x - mean) / std per channel."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        return x.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)  # in place: same values

    def draw(self, shape) -> None:
        return None

    def apply(self, x: Tensor, params) -> Tensor:
        return self(x)  # broadcasts over the batch

    def batch(self, x: Tensor) -> Tensor:
        return self(x)


def _tensor_transforms(info: DatasetInfo, *, crop: bool, flip: bool, augment: bool):
    """(train, test) transforms for uint8 tensor images of size ``info.image_size``."""
    test = _Normalize(info.mean, info.std)
    steps = []
    if augment and crop:
        steps.append(_RandomCrop(info.image_size, padding=4))
    if augment and flip:
        steps.append(_RandomHorizontalFlip())
    train = _Compose(*steps, test) if steps else test
    return train, test


class _ArrayDataset(Dataset):
    """uint8 images (N, C, H, W) + int labels, with a transform; no copy of the arrays.

    ``__getitems__`` (which DataLoader and Subset call for a whole batch) transforms the batch
    with tensor operations: about N times fewer Python steps than one image at a time, and the
    same tensors bit for bit, since the random draws are made in the same order.
    """

    def __init__(self, images: Tensor, labels: Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(self.images[index]), int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, int]]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        images = self.transform.batch(self.images[index])
        return list(zip(images.unbind(0), self.labels[index].tolist()))


def _array_parts(images: np.ndarray, labels: np.ndarray, test_images: np.ndarray,
                 test_labels: np.ndarray, train_tf, test_tf) -> _Parts:
    def tensor(array: np.ndarray) -> Tensor:  # contiguous, writable (idx arrays are read-only views)
        return torch.from_numpy(np.require(array, requirements=["C", "W"]))

    x, y = tensor(images), torch.from_numpy(labels.astype(np.int64))
    tx = tensor(test_images)
    ty = torch.from_numpy(test_labels.astype(np.int64))
    plain = _ArrayDataset(x, y, test_tf)
    aug = plain if train_tf is test_tf else _ArrayDataset(x, y, train_tf)
    return _Parts(aug, plain, _ArrayDataset(tx, ty, test_tf))


def _check_labels(labels: np.ndarray, num_classes: int, where: Path, title: str) -> None:
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(
            f"{where} has label {int(labels.max())}, but {title} has {num_classes} classes; "
            f"the files are corrupt or of another dataset, delete them and download {title} again"
        )


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: the official binary batches, read with numpy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CifarFormat:
    title: str
    folder: str  # inside the dataset root
    archive: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_bytes: int  # label bytes before the 3072 pixel bytes of each record
    label_offset: int  # which of them is the label used


_CIFAR10 = _CifarFormat(
    "CIFAR-10", "cifar-10-batches-bin", "cifar-10-binary.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530",
    tuple(f"data_batch_{i}.bin" for i in range(1, 6)), ("test_batch.bin",), 1, 0,
)
_CIFAR100 = _CifarFormat(
    "CIFAR-100", "cifar-100-binary", "cifar-100-binary.tar.gz",
    "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8",
    ("train.bin",), ("test.bin",), 2, 1,  # coarse label, fine label: use the fine one
)


def _read_cifar_binary(paths: list[Path], fmt: _CifarFormat, num_classes: int):
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
    _check_labels(labels, num_classes, paths[0].parent, fmt.title)
    images = table[:, fmt.label_bytes:].reshape(-1, 3, 32, 32)
    return images, labels


def _ensure_cifar(root: Path, fmt: _CifarFormat, download: bool) -> Path:
    """The folder of batch files, extracting a local archive or downloading when needed."""
    folder = root / fmt.folder
    needed = fmt.train_files + fmt.test_files
    if all((folder / f).is_file() for f in needed):
        return folder
    archive = root / fmt.archive
    if archive.is_file() and _md5(archive) == fmt.md5:  # a copied-over archive: just extract it
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(root, filter="data")
        except _FILE_ERRORS as err:
            raise DataError(
                f"cannot extract {archive} ({_one_line(err)}); delete it and download "
                f"{fmt.title} again"
            ) from err
    elif not download:
        raise DataError(
            f"{fmt.title} not found in {folder} and --no-download was given; download it there "
            f"(or put {fmt.archive} in {root}) or drop --no-download"
        )
    else:
        _torchvision()  # fail on a broken torchvision before creating any folder
        _make_dir(root)
        try:
            _download_archive(fmt.url, root, md5=fmt.md5)
        except ForceError:
            raise
        except _FILE_ERRORS as err:
            raise DataError(
                f"could not download {fmt.title} into {root} ({_one_line(err)}); check the network "
                f"connection, or put {fmt.archive} from {fmt.url} in {root} yourself"
            ) from err
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise DataError(
            f"{fmt.title} in {folder} is incomplete (missing {', '.join(missing)}); delete "
            f"{folder} and download it again"
        )
    return folder


def _cifar_builder(fmt: _CifarFormat):
    def build(root: Path, info: DatasetInfo, download: bool, augment: bool) -> _Parts:
        folder = _ensure_cifar(root, fmt, download)
        try:
            x, y = _read_cifar_binary([folder / f for f in fmt.train_files], fmt, info.num_classes)
            tx, ty = _read_cifar_binary([folder / f for f in fmt.test_files], fmt, info.num_classes)
        except ForceError:
            raise
        except _FILE_ERRORS as err:
            raise DataError(
                f"cannot read {fmt.title} from {folder} ({_one_line(err)}); delete that folder "
                f"and download it again"
            ) from err
        train_tf, test_tf = _tensor_transforms(info, crop=True, flip=True, augment=augment)
        return _array_parts(x, y, tx, ty, train_tf, test_tf)

    return build


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST: idx files (torchvision's folder layout and mirrors)
# --------------------------------------------------------------------------------------------

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_idx(path: Path) -> np.ndarray:
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


def _mnist_builder(title: str, tv_class: str):
    def build(root: Path, info: DatasetInfo, download: bool, augment: bool) -> _Parts:
        raw = root / tv_class / "raw"
        names = [n for pair in _MNIST_FILES.values() for n in pair]

        def present(n: str) -> bool:
            return (raw / n).is_file() or (raw / f"{n}.gz").is_file()

        if not all(map(present, names)):
            if not download:
                raise DataError(
                    f"{title} not found in {raw} and --no-download was given; download it there "
                    f"or drop --no-download"
                )
            cls = getattr(_torchvision().datasets, tv_class)
            _make_dir(raw)
            for filename, md5 in cls.resources:
                if present(filename.removesuffix(".gz")):
                    continue
                errors = []
                for mirror in cls.mirrors:
                    try:
                        _download_archive(f"{mirror}{filename}", raw, md5=md5, filename=filename)
                        break
                    except _FILE_ERRORS as err:
                        errors.append(_one_line(err))
                else:
                    raise DataError(
                        f"could not download {title} into {raw} ({errors[-1] if errors else 'no mirror'}); "
                        f"check the network connection, or put the four idx files there yourself"
                    )
        try:
            arrays = {split: (_read_idx(raw / images), _read_idx(raw / labels))
                      for split, (images, labels) in _MNIST_FILES.items()}
        except ForceError:
            raise
        except _FILE_ERRORS as err:
            raise DataError(
                f"cannot read {title} from {raw} ({_one_line(err)}); delete that folder and "
                f"download it again"
            ) from err
        for split, (images, labels) in arrays.items():
            if images.ndim != 3 or len(images) != len(labels):
                raise DataError(f"{title} {split} files in {raw} do not match (images "
                                f"{images.shape}, labels {labels.shape}); delete them and download again")
            _check_labels(labels, info.num_classes, raw, title)
        (x, y), (tx, ty) = arrays["train"], arrays["test"]
        train_tf, test_tf = _tensor_transforms(info, crop=False, flip=False, augment=augment)
        return _array_parts(x[:, None], y, tx[:, None], ty, train_tf, test_tf)

    return build


# --------------------------------------------------------------------------------------------
# SVHN: MATLAB files read with scipy
# --------------------------------------------------------------------------------------------


def _build_svhn(root: Path, info: DatasetInfo, download: bool, augment: bool) -> _Parts:
    files = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
    missing = [s for s, f in files.items() if not (root / f).is_file()]
    if missing and not download:
        raise DataError(
            f"SVHN not found in {root} (no {', '.join(files[s] for s in missing)}) and --no-download "
            f"was given; download it there or drop --no-download"
        )
    try:
        import scipy.io
    except ImportError as err:
        raise DataError("reading SVHN needs scipy, which is not installed; pip install scipy") from err
    if missing:
        split_list = _torchvision().datasets.SVHN.split_list
        _make_dir(root)
        for split in missing:
            url, filename, md5 = split_list[split]
            try:
                _download_archive(url, root, md5=md5, filename=filename, extract=False)
            except ForceError:
                raise
            except _FILE_ERRORS as err:
                raise DataError(
                    f"could not download SVHN into {root} ({_one_line(err)}); check the network "
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
                f"cannot read {path} ({_one_line(err)}); delete it and download SVHN again"
            ) from err
        if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != len(labels):
            raise DataError(f"{path} does not hold 32x32 RGB SVHN images; delete it and download SVHN again")
        labels = labels.astype(np.int64) % 10  # SVHN writes the digit 0 as label 10
        arrays[split] = (np.transpose(images, (3, 2, 0, 1)), labels)  # (H, W, C, N) -> (N, C, H, W)
    (x, y), (tx, ty) = arrays["train"], arrays["test"]
    train_tf, test_tf = _tensor_transforms(info, crop=True, flip=False, augment=augment)
    return _array_parts(x, y, tx, ty, train_tf, test_tf)


# --------------------------------------------------------------------------------------------
# Image folders: imagefolder, imagenet, tiny-imagenet
# --------------------------------------------------------------------------------------------


def _find_classes(directory: Path) -> list[str]:
    """Class names = sorted sub-folder names (hidden folders skipped), as ImageFolder does."""
    try:
        return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    except OSError as err:
        raise DataError(f"cannot list {directory} ({_one_line(err)}); check the path and its permissions") from err


def _image_files(directory: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames.sort()
        found += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(_IMG_EXTENSIONS)]
    return found


def _scan_class_folders(directory: Path, class_to_idx: dict[str, int], title: str) -> list[tuple[Path, int]]:
    classes = _find_classes(directory)
    unknown = [c for c in classes if c not in class_to_idx]
    if unknown:
        raise DataError(
            f"{directory} has class folders that the training set lacks ({', '.join(unknown[:5])}); "
            f"give {title}'s train/ and val/ the same class folders"
        )
    samples = []
    for name in classes:
        files = _image_files(directory / name)
        if not files:
            raise DataError(f"{directory / name} holds no images ({', '.join(_IMG_EXTENSIONS)}); "
                            f"add images or remove that folder")
        samples += [(path, class_to_idx[name]) for path in files]
    if not samples:
        raise DataError(f"{directory} holds no class folders with images; expected {directory}/<class>/<image>")
    return samples


class _ImageFiles(Dataset):
    """(path, label) samples decoded with PIL as RGB; unreadable files become a DataError."""

    def __init__(self, samples: list[tuple[Path, int]], transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from PIL import Image

        path, label = self.samples[index]
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot read image {path} ({_one_line(err)}); remove or replace that file") from err
        return self.transform(img), label


class _PILToUint8:
    def __call__(self, img) -> Tensor:
        return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _imagenet_transforms(info: DatasetInfo, augment: bool):
    """ImageNet recipe: RandomResizedCrop(224) + flip; test Resize(256) + CenterCrop(224)."""
    v2 = _torchvision().transforms.v2
    size = info.image_size
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(info.mean, info.std),
            v2.ToPureTensor()]
    test = v2.Compose([v2.Resize(round(size * 256 / 224)), v2.CenterCrop(size), *tail])
    if not augment:
        return test, test
    return v2.Compose([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), *tail]), test


def _folder_parts(train_samples, test_samples, train_tf, test_tf) -> _Parts:
    plain = _ImageFiles(train_samples, test_tf)
    aug = plain if train_tf is test_tf else _ImageFiles(train_samples, train_tf)
    return _Parts(aug, plain, _ImageFiles(test_samples, test_tf))


def _train_classes(train_dir: Path, title: str, info: DatasetInfo) -> dict[str, int]:
    classes = _find_classes(train_dir)
    if not classes:
        raise DataError(f"{train_dir} has no class folders; expected {train_dir}/<class>/<image>")
    if len(classes) > info.num_classes:
        raise DataError(
            f"{train_dir} has {len(classes)} class folders but {title} has {info.num_classes} "
            f"classes; point --data-dir at the right folder (or use --dataset imagefolder)"
        )
    return {c: i for i, c in enumerate(classes)}


def _missing_folder(title: str, root: Path, *, extra: str = "") -> DataError:
    return DataError(
        f"{title} not found: expected {root / 'train'} and {root / 'val'} with one folder per "
        f"class{extra}; {title} cannot be downloaded automatically, put it there or pass --data-dir"
    )


def _build_imagefolder(root: Path, info: DatasetInfo, download: bool, augment: bool) -> _Parts:
    title = "imagefolder" if info.name == "imagefolder" else "ImageNet"
    val_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or val_dir is None:
        raise _missing_folder(title, root, extra=" (test/ may stand for val/)" if title == "imagefolder"
                              else " (val/ sorted into class folders too)")
    class_to_idx = _train_classes(root / "train", title, info)
    train_samples = _scan_class_folders(root / "train", class_to_idx, title)
    test_samples = _scan_class_folders(val_dir, class_to_idx, title)
    train_tf, test_tf = _imagenet_transforms(info, augment)
    return _folder_parts(train_samples, test_samples, train_tf, test_tf)


def _tiny_val_samples(val_dir: Path, class_to_idx: dict[str, int]) -> list[tuple[Path, int]]:
    """Tiny-ImageNet's original val layout: val/images/*.JPEG + val/val_annotations.txt."""
    annotations = val_dir / "val_annotations.txt"
    samples = []
    try:
        lines = annotations.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {annotations} ({_one_line(err)}); download Tiny-ImageNet again") from err
    for number, line in enumerate(lines, 1):
        fields = line.split("\t")
        if not line.strip():
            continue
        if len(fields) < 2 or fields[1] not in class_to_idx:
            raise DataError(
                f"{annotations} line {number} names no known class ({line.strip()[:60]!r}); the file "
                f"must hold '<image>\\t<wnid>' lines for classes in train/"
            )
        path = val_dir / "images" / fields[0]
        if not path.is_file():
            raise DataError(f"{path} is listed in {annotations} but missing; download Tiny-ImageNet again")
        samples.append((path, class_to_idx[fields[1]]))
    if not samples:
        raise DataError(f"{annotations} lists no images; download Tiny-ImageNet again")
    return samples


def _build_tiny_imagenet(root: Path, info: DatasetInfo, download: bool, augment: bool) -> _Parts:
    title = "Tiny-ImageNet"
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise _missing_folder(title, root, extra=" (val/ may also be the original val/images + "
                              "val/val_annotations.txt)")
    class_to_idx = _train_classes(root / "train", title, info)
    train_samples = _scan_class_folders(root / "train", class_to_idx, title)
    if (root / "val" / "val_annotations.txt").is_file():
        test_samples = _tiny_val_samples(root / "val", class_to_idx)
    else:
        test_samples = _scan_class_folders(root / "val", class_to_idx, title)
    aug_tf, plain_tf = _tensor_transforms(info, crop=True, flip=True, augment=augment)
    test_tf = _Compose(_PILToUint8(), plain_tf)
    train_tf = test_tf if aug_tf is plain_tf else _Compose(_PILToUint8(), aug_tf)
    return _folder_parts(train_samples, test_samples, train_tf, test_tf)


# --------------------------------------------------------------------------------------------
# digits (scikit-learn) and synthetic
# --------------------------------------------------------------------------------------------

_DIGITS_SPLIT_SEED = 0  # fixed: the digits test set is the same for every run


def _build_digits(root: Path, info: DatasetInfo, download: bool, augment: bool) -> _Parts:
    x, y = _read_digits()
    train_idx, test_idx = _stratified_split(y, test_fraction=0.2, seed=_DIGITS_SPLIT_SEED)
    x_train, x_test, y_train, y_test = x[train_idx], x[test_idx], y[train_idx], y[test_idx]

    def tensors(images: np.ndarray, labels: np.ndarray) -> TensorDataset:
        pixels = torch.as_tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
        pixels = (pixels - info.mean[0]) / info.std[0]
        return TensorDataset(pixels, torch.as_tensor(labels, dtype=torch.int64))

    train = tensors(x_train, y_train)
    return _Parts(train, train, tensors(x_test, y_test))


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits file, read without importing scikit-learn (1.2 s of imports
    with scipy, a third of a small `force prune`): what ``load_digits(return_X_y=True)`` returns."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits dataset needs scikit-learn; pip install scikit-learn")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",")
    except _FILE_ERRORS as err:
        raise DataError(f"cannot read scikit-learn's digits file {path} ({_one_line(err)}); reinstall scikit-learn") from None
    return table[:, :-1], table[:, -1].astype(int)


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (train, test) indices of scikit-learn's ``train_test_split(stratify=y, random_state=seed)``.

    The same algorithm as its StratifiedShuffleSplit and the same legacy NumPy RNG, so the split
    is identical (a test checks it against scikit-learn) without importing scikit-learn.
    """
    rng = np.random.RandomState(seed)
    n_test = math.ceil(test_fraction * len(y))
    n_train = len(y) - n_test
    _, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train, test = [], []
    for i in range(len(class_counts)):
        permuted = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(permuted[: n_i[i]])
        test.extend(permuted[n_i[i]: n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's approximate mode of the multivariate hypergeometric (ties drawn from ``rng``)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


SYNTHETIC_TRAIN_SIZE = 1024
SYNTHETIC_TEST_SIZE = 256
_SYNTHETIC_SEED = 20210312  # fixed: independent of any global RNG


class SyntheticDataset(Dataset):
    """Deterministic, learnable random images: sample ``i`` is its class's fixed low-frequency
    pattern plus Gaussian noise, both drawn from generators seeded by (split, i) only.
    Already standardised (about zero mean, unit variance), so no normalisation is applied."""

    def __init__(self, size: int, split_seed: int, num_classes: int = 10,
                 shape: tuple[int, int, int] = (3, 32, 32)):
        self.size, self.split_seed, self.num_classes, self.shape = size, split_seed, num_classes, shape
        c, h, w = shape
        g = torch.Generator().manual_seed(_SYNTHETIC_SEED)
        coarse = torch.randn(num_classes, c, (h + 3) // 4, (w + 3) // 4, generator=g)
        self.patterns = coarse.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)[:, :, :h, :w].contiguous()

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        if not 0 <= index < self.size:
            raise IndexError(index)
        label = index % self.num_classes
        g = torch.Generator().manual_seed(self.split_seed * 1_000_003 + index)
        noise = torch.randn(self.shape, generator=g)
        return (self.patterns[label] + noise) * (0.5 ** 0.5), label


def _build_synthetic(root: Path, info: DatasetInfo, download: bool, augment: bool) -> _Parts:
    shape = (info.in_channels, info.image_size, info.image_size)
    train = SyntheticDataset(SYNTHETIC_TRAIN_SIZE, 1, info.num_classes, shape)
    return _Parts(train, train, SyntheticDataset(SYNTHETIC_TEST_SIZE, 2, info.num_classes, shape))


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------


def _info(name, classes, channels, size, mean, std, *, imagenet_style=False, downloadable=False):
    return DatasetInfo(name, classes, channels, size, tuple(mean), tuple(std), imagenet_style, downloadable)


DATASETS: dict[str, DatasetSpec] = {
    spec.info.name: spec
    for spec in [
        DatasetSpec(_info("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                          downloadable=True),
                    "CIFAR-10, 32x32 RGB, 10 classes (binary version, downloaded)", "cifar10",
                    _cifar_builder(_CIFAR10)),
        DatasetSpec(_info("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                          downloadable=True),
                    "CIFAR-100, 32x32 RGB, 100 fine classes (binary version, downloaded)", "cifar100",
                    _cifar_builder(_CIFAR100)),
        DatasetSpec(_info("mnist", 10, 1, 28, (0.1307,), (0.3081,), downloadable=True),
                    "MNIST handwritten digits, 28x28 grayscale (downloaded)", "mnist",
                    _mnist_builder("MNIST", "MNIST")),
        DatasetSpec(_info("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), downloadable=True),
                    "Fashion-MNIST, 28x28 grayscale (downloaded)", "fashion-mnist",
                    _mnist_builder("Fashion-MNIST", "FashionMNIST")),
        DatasetSpec(_info("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                          downloadable=True),
                    "SVHN house numbers, 32x32 RGB (downloaded; needs scipy)", "svhn", _build_svhn),
        # imagenet_style=False: the paper trains its CIFAR networks (CIFAR VGG, CIFAR-stem ResNet) on
        # 64x64 Tiny-ImageNet, not the ImageNet ones (VGG-19-bn would have 140 M weights, not 20 M).
        DatasetSpec(_info("tiny-imagenet", 200, 3, 64, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
                    "Tiny-ImageNet, 64x64 RGB, 200 classes (place it in DATA_DIR/tiny-imagenet-200)",
                    "tiny-imagenet-200", _build_tiny_imagenet),
        DatasetSpec(_info("imagenet", 1000, 3, 224, _IMAGENET_MEAN, _IMAGENET_STD, imagenet_style=True),
                    "ImageNet ILSVRC-2012 (place it in DATA_DIR/imagenet/{train,val}/<class>/)",
                    "imagenet", _build_imagefolder),
        DatasetSpec(_info("imagefolder", 0, 3, 224, _IMAGENET_MEAN, _IMAGENET_STD, imagenet_style=True),
                    "any DATA_DIR/{train,val}/<class>/<image> tree, 224x224 ImageNet-style transforms",
                    "", _build_imagefolder),
        DatasetSpec(_info("digits", 10, 1, 8, (0.3053,), (0.3760,)),
                    "scikit-learn's bundled 8x8 handwritten digits (1797 images, no download)", "",
                    _build_digits),
        DatasetSpec(_info("synthetic", 10, 3, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
                    "deterministic learnable random 3x32x32 tensors, 10 classes (smoke tests, benchmarks)",
                    "", _build_synthetic),
    ]
}


def dataset_names() -> list[str]:
    """Every registered dataset name, sorted."""
    return sorted(DATASETS)


def _spec(name: str) -> DatasetSpec:
    spec = DATASETS.get(str(name).strip().lower().replace("_", "-"))
    if spec is None:
        raise UnknownNameError("dataset", name, DATASETS)
    return spec


def default_data_dir() -> Path:
    """``$FORCE_DATA`` if set, else ``$XDG_CACHE_HOME/force-cli/data`` (``~/.cache/force-cli/data``)."""
    env = os.environ.get("FORCE_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "force-cli" / "data"


def _dataset_root(spec: DatasetSpec, data_dir: str | Path | None) -> Path:
    base = Path(data_dir).expanduser() if data_dir not in (None, "") else default_data_dir()
    return base / spec.folder if spec.folder else base


def dataset_info(name: str, data_dir: str | Path | None = None) -> DatasetInfo:
    """A dataset's shape, classes and normalisation, without decoding any image.

    Only ``imagefolder`` touches the disk: it counts the class folders under ``data_dir/train``.
    """
    spec = _spec(name)
    if spec.info.name != "imagefolder":
        return spec.info
    root = _dataset_root(spec, data_dir)
    train = root / "train"
    if not train.is_dir():
        raise DataError(
            f"no image folder at {train}; pass --data-dir DIR where DIR/train/<class>/ and "
            f"DIR/val/<class>/ hold the images"
        )
    classes = _find_classes(train)
    if not classes:
        raise DataError(f"{train} has no class folders; put each class's images in {train}/<class>/")
    return dataclasses.replace(spec.info, num_classes=len(classes))


def load_datasets(name: str, data_dir: str | Path | None = None, *, download: bool = True,
                  val_fraction: float = 0.0, seed: int = 0, augment: bool = True) -> DataSplits:
    """Build the train / val / test datasets of ``name``.

    ``val_fraction`` of the training set is held out as ``val`` (no augmentation), chosen by a
    permutation seeded with ``seed``; ``train`` and ``train_eval`` keep the other indices.
    Missing data is downloaded into its folder under ``data_dir`` when ``download`` allows.
    """
    spec = _spec(name)
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"validation fraction must be in [0, 1), got {val_fraction}; use e.g. 0.1")
    info = dataset_info(spec.info.name, data_dir)
    root = _dataset_root(spec, data_dir)
    parts = spec.build(root, info, download, augment)
    n = len(parts.train_plain)
    if val_fraction == 0:
        return DataSplits(info, parts.train_aug, None, parts.test, parts.train_plain)
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise ConfigError(
            f"validation fraction {val_fraction} leaves no training data out of {n} examples; "
            f"use a smaller fraction"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx = order[:n_val].sort().values.tolist()
    train_idx = order[n_val:].sort().values.tolist()
    return DataSplits(
        info=info,
        train=Subset(parts.train_aug, train_idx),
        val=Subset(parts.train_plain, val_idx),
        test=parts.test,
        train_eval=Subset(parts.train_plain, train_idx),
    )


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def _check_loader_args(batch_size: int, workers: int) -> None:
    if int(batch_size) < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if int(workers) < 0:
        raise ConfigError(f"the number of data-loading workers must be >= 0, got {workers}")


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, workers: int = 0,
                drop_last: bool = False, device: torch.device | str | None = None) -> DataLoader:
    """A DataLoader whose shuffling (and worker seeding) comes from a generator seeded by ``seed``.

    Memory is pinned only for a CUDA ``device``. Workers persist across epochs.
    """
    _check_loader_args(batch_size, workers)
    pin = device is not None and torch.device(device).type == "cuda"
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, drop_last=drop_last,
        pin_memory=pin, generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0,
    )


class _EndlessPermutation(Sampler[int]):
    """Indices forever: a fresh permutation of range(n) per epoch, from one seeded generator."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed)
        while True:
            yield from torch.randperm(self.n, generator=generator).tolist()


class BatchStream:
    """Endless seeded shuffled stream of (x, y) batches from a dataset: one persistent iterator,
    a new seeded permutation each epoch — never re-creates an iterator per batch.

    Batches are always full: a batch that crosses an epoch boundary takes the rest of one
    permutation and the start of the next. With ``workers == 0`` the augmentation randomness comes
    from the stream's own RNG state, so the stream depends on ``seed`` only and leaves torch's
    global RNG untouched; with workers, each worker is seeded from the stream's generator.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int = 0, workers: int = 0):
        _check_loader_args(batch_size, workers)
        if len(dataset) == 0:
            raise DataError("the dataset to draw batches from is empty; check the data folder")
        self._workers = workers
        self._loader = DataLoader(
            dataset, batch_size=batch_size, sampler=_EndlessPermutation(len(dataset), seed),
            num_workers=workers, generator=torch.Generator().manual_seed(seed),
        )
        self._iterator = None
        rng = torch.Generator().manual_seed(seed + 0x5EED)
        self._rng_state = rng.get_state()

    def next(self) -> tuple[Tensor, Tensor]:
        if self._workers:
            if self._iterator is None:
                self._iterator = iter(self._loader)
            return next(self._iterator)
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._rng_state)
            if self._iterator is None:
                self._iterator = iter(self._loader)
            batch = next(self._iterator)
            self._rng_state = torch.get_rng_state()
        return batch

    __next__ = next

    def __iter__(self) -> BatchStream:
        return self

    def take(self, n: int) -> list[tuple[Tensor, Tensor]]:
        return [self.next() for _ in range(n)]
