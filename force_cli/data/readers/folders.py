"""Image folders: ``imagefolder``, ``imagenet`` and ``tiny-imagenet``, decoded per image.

Layouts::

    imagenet/{train,val}/<class>/*.JPEG
    tiny-imagenet-200/{train,val}/        (val/ sorted into class folders, or the original
                                           val/images/ + val/val_annotations.txt)
    imagefolder: the data directory itself holds train/<class>/ and val/<class>/ (or test/)

torchvision finds the images (``datasets.folder.make_dataset``: its extensions, its order) and
decodes them (``default_loader``: PIL, RGB). Not its ``ImageFolder`` class: that counts hidden
folders (``.ipynb_checkpoints``) as classes, would scan the training tree twice for the augmented
and plain views, cannot take Tiny-ImageNet's annotation-file val split, and would map a val/
class that train/ lacks to nothing instead of saying so.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch.utils.data import Dataset

from force_cli.data import download
from force_cli.data.download import one_line
from force_cli.data.transforms import Compose, PILToUint8, imagenet_transforms, tensor_transforms
from force_cli.data.types import DatasetInfo, Parts
from force_cli.errors import DataError


def find_classes(directory: Path) -> list[str]:
    """Class names = sorted sub-folder names, hidden folders skipped (torchvision's keeps them)."""
    try:
        return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    except OSError as err:
        raise DataError(f"cannot list {directory} ({one_line(err)}); check the path and its permissions") from err


def _scan_class_folders(directory: Path, class_to_idx: dict[str, int], title: str) -> list[tuple[str, int]]:
    classes = find_classes(directory)
    unknown = [c for c in classes if c not in class_to_idx]
    if unknown:
        raise DataError(
            f"{directory} has class folders that the training set lacks ({', '.join(unknown[:5])}); "
            f"give {title}'s train/ and val/ the same class folders"
        )
    if not classes:
        raise DataError(f"{directory} holds no class folders with images; expected {directory}/<class>/<image>")
    folder = download.import_torchvision().datasets.folder
    samples = folder.make_dataset(str(directory), {c: class_to_idx[c] for c in classes},
                                  extensions=folder.IMG_EXTENSIONS, allow_empty=True)
    found = {label for _, label in samples}
    empty = [c for c in classes if class_to_idx[c] not in found]
    if empty:
        raise DataError(f"{directory / empty[0]} holds no images ({', '.join(folder.IMG_EXTENSIONS)}); "
                        f"add images or remove that folder")
    return samples


class ImageFiles(Dataset):
    """(path, label) samples decoded by torchvision's loader; unreadable files become a DataError."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        # torchvision (and PIL) only once an image is read: most datasets never need them (seconds of imports)
        from PIL import Image
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[index]
        try:
            img = default_loader(path)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"cannot read image {path} ({one_line(err)}); remove or replace that file") from err
        return self.transform(img), label


def _folder_parts(train_samples, test_samples, train_tf, test_tf) -> Parts:
    plain = ImageFiles(train_samples, test_tf)
    aug = plain if train_tf is test_tf else ImageFiles(train_samples, train_tf)
    return Parts(aug, plain, ImageFiles(test_samples, test_tf))


def _train_classes(train_dir: Path, title: str, info: DatasetInfo) -> dict[str, int]:
    classes = find_classes(train_dir)
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


def build_imagefolder(root: Path, info: DatasetInfo, download_missing: bool, augment: bool) -> Parts:
    title = "imagefolder" if info.name == "imagefolder" else "ImageNet"
    val_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or val_dir is None:
        raise _missing_folder(title, root, extra=" (test/ may stand for val/)" if title == "imagefolder"
                              else " (val/ sorted into class folders too)")
    class_to_idx = _train_classes(root / "train", title, info)
    train_samples = _scan_class_folders(root / "train", class_to_idx, title)
    test_samples = _scan_class_folders(val_dir, class_to_idx, title)
    train_tf, test_tf = imagenet_transforms(info, augment)
    return _folder_parts(train_samples, test_samples, train_tf, test_tf)


def _tiny_val_samples(val_dir: Path, class_to_idx: dict[str, int]) -> list[tuple[Path, int]]:
    """Tiny-ImageNet's original val layout: val/images/*.JPEG + val/val_annotations.txt."""
    annotations = val_dir / "val_annotations.txt"
    samples = []
    try:
        lines = annotations.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read {annotations} ({one_line(err)}); download Tiny-ImageNet again") from err
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


def build_tiny_imagenet(root: Path, info: DatasetInfo, download_missing: bool, augment: bool) -> Parts:
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
    aug_tf, plain_tf = tensor_transforms(info, crop=True, flip=True, augment=augment)
    test_tf = Compose(PILToUint8(), plain_tf)
    train_tf = test_tf if aug_tf is plain_tf else Compose(PILToUint8(), aug_tf)
    return _folder_parts(train_samples, test_samples, train_tf, test_tf)
