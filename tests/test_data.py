"""Dataset factory tests: fake datasets in the real on-disk formats, loaded through the real code.

Offline and CPU-only: nothing is downloaded (download paths are exercised with a stub that fails).
"""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from force_cli.data import download, transforms
from force_cli.data.arrays import ArrayDataset, to_device
from force_cli.data import (
    DATASETS,
    BatchStream,
    DatasetInfo,
    dataset_info,
    dataset_names,
    default_data_dir,
    load_datasets,
    make_loader,
)
from force_cli.data.readers import cifar, digits
from force_cli.errors import ConfigError, DataError, UnknownNameError
from force_cli.training.order import epoch_batches

ALL_NAMES = ["cifar10", "cifar100", "digits", "fashion-mnist", "imagefolder", "imagenet", "mnist",
             "svhn", "synthetic", "tiny-imagenet"]


# ---------------------------------------------------------------------------------------------
# fake data writers (the real file formats)
# ---------------------------------------------------------------------------------------------


def write_fake_cifar10(data_dir: Path, per_file: int = 20):
    """CIFAR-10 binary batches; returns (train_labels, train_pixels, test_labels, test_pixels)."""
    folder = data_dir / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    out = {}
    for split, files in [("train", [f"data_batch_{i}.bin" for i in range(1, 6)]), ("test", ["test_batch.bin"])]:
        labels, pixels = [], []
        for k, name in enumerate(files):
            lab = ((np.arange(per_file) * 3 + k) % 10).astype(np.uint8)
            pix = rng.randint(0, 256, size=(per_file, 3072)).astype(np.uint8)
            (folder / name).write_bytes(np.concatenate([lab[:, None], pix], axis=1).tobytes())
            labels.append(lab)
            pixels.append(pix)
        out[split] = (np.concatenate(labels), np.concatenate(pixels).reshape(-1, 3, 32, 32))
    return out["train"] + out["test"]


def write_fake_cifar100(data_dir: Path, n_train: int = 30, n_test: int = 10):
    folder = data_dir / "cifar100" / "cifar-100-binary"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(1)
    out = []
    for name, n in [("train.bin", n_train), ("test.bin", n_test)]:
        fine = ((np.arange(n) * 37 + 11) % 100).astype(np.uint8)
        coarse = (19 - np.arange(n) % 20).astype(np.uint8)  # differs from fine: a mix-up shows
        pix = rng.randint(0, 256, size=(n, 3072)).astype(np.uint8)
        (folder / name).write_bytes(np.concatenate([coarse[:, None], fine[:, None], pix], axis=1).tobytes())
        out += [fine, pix.reshape(-1, 3, 32, 32)]
    return out


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    blob = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    blob += array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        blob = gzip.compress(blob)
    path.write_bytes(blob)


def write_png(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(path, format="PNG")


def solid(color, h=30, w=40):
    return np.broadcast_to(np.array(color, dtype=np.uint8), (h, w, 3)).copy()


def denormalise(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    mean = torch.tensor(info.mean).view(-1, 1, 1)
    std = torch.tensor(info.std).view(-1, 1, 1)
    return x * std + mean


def as_bytes(x: torch.Tensor, info: DatasetInfo) -> np.ndarray:
    """A normalised image back to its uint8 pixels (exact when the pipeline is exact)."""
    return torch.round(denormalise(x, info) * 255).to(torch.int64).numpy()


# ---------------------------------------------------------------------------------------------
# registry, names, info, data dir
# ---------------------------------------------------------------------------------------------


def test_registry_names_and_infos():
    assert dataset_names() == ALL_NAMES
    assert set(DATASETS) == set(ALL_NAMES)
    for name in ALL_NAMES:
        if name == "imagefolder":
            continue
        info = dataset_info(name)
        assert info.name == name
        assert info.num_classes > 0 and info.image_size > 0
        assert len(info.mean) == len(info.std) == info.in_channels
    assert dataset_info("cifar100").num_classes == 100
    assert dataset_info("mnist").in_channels == 1 and dataset_info("mnist").image_size == 28
    assert dataset_info("digits").image_size == 8
    assert dataset_info("imagenet").imagenet_style
    assert not dataset_info("tiny-imagenet").imagenet_style  # the paper's CIFAR networks at 64x64
    assert not dataset_info("cifar10").imagenet_style
    assert dataset_info("cifar10").downloadable and not dataset_info("imagenet").downloadable


def test_name_spelling_is_forgiving():
    assert dataset_info("Fashion_MNIST").name == "fashion-mnist"
    assert dataset_info("CIFAR10").name == "cifar10"


@pytest.mark.parametrize("call", [lambda: dataset_info("cifar11"), lambda: load_datasets("nope")])
def test_unknown_name_lists_known_names(call):
    with pytest.raises(UnknownNameError) as exc:
        call()
    message = str(exc.value)
    assert "dataset" in message
    for name in ALL_NAMES:
        assert name in message


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FORCE_DATA", str(tmp_path / "mine"))
    assert default_data_dir() == tmp_path / "mine"
    monkeypatch.delenv("FORCE_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "force-cli" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "force-cli" / "data"


def test_default_data_dir_is_used(monkeypatch, tmp_path):
    write_fake_cifar10(tmp_path)
    monkeypatch.setenv("FORCE_DATA", str(tmp_path))
    assert len(load_datasets("cifar10", download=False).train) == 100


# ---------------------------------------------------------------------------------------------
# CIFAR binary
# ---------------------------------------------------------------------------------------------


def test_cifar10_binary_round_trip(tmp_path):
    train_y, train_x, test_y, test_x = write_fake_cifar10(tmp_path)
    splits = load_datasets("cifar10", tmp_path, download=False)
    info = splits.info
    assert info == dataset_info("cifar10")
    assert len(splits.train) == len(splits.train_eval) == 100 and len(splits.test) == 20
    assert splits.val is None
    for index in (0, 37, 99):
        x, y = splits.train_eval[index]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
        assert y == train_y[index]
        np.testing.assert_array_equal(as_bytes(x, info), train_x[index])
    x, y = splits.test[13]
    assert y == test_y[13]
    np.testing.assert_array_equal(as_bytes(x, info), test_x[13])


def test_cifar10_augmentation_crops_and_flips(tmp_path):
    _, train_x, _, _ = write_fake_cifar10(tmp_path)
    splits = load_datasets("cifar10", tmp_path, download=False)
    torch.manual_seed(0)
    original = train_x[5].astype(np.int64)
    padded = np.pad(original, ((0, 0), (4, 4), (4, 4)))
    candidates = [padded[:, i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
    candidates += [c[:, :, ::-1] for c in candidates]
    changed = 0
    for _ in range(20):
        x, y = splits.train[5]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        pixels = as_bytes(x, splits.info)
        assert any(np.array_equal(pixels, c) for c in candidates)  # a padded crop, maybe flipped
        changed += not np.array_equal(pixels, original)
    assert changed > 0
    plain = load_datasets("cifar10", tmp_path, download=False, augment=False)
    for _ in range(5):
        np.testing.assert_array_equal(as_bytes(plain.train[5][0], plain.info), original)


def test_cifar100_uses_fine_label(tmp_path):
    fine, pixels, test_fine, test_pixels = write_fake_cifar100(tmp_path)
    splits = load_datasets("cifar100", tmp_path, download=False)
    assert splits.info.num_classes == 100
    assert len(splits.train) == 30 and len(splits.test) == 10
    assert [splits.train_eval[i][1] for i in range(30)] == fine.tolist()
    np.testing.assert_array_equal(as_bytes(splits.train_eval[7][0], splits.info), pixels[7])
    assert splits.test[3][1] == test_fine[3]
    np.testing.assert_array_equal(as_bytes(splits.test[3][0], splits.info), test_pixels[3])
    assert splits.train[0][0].shape == (3, 32, 32)


def test_truncated_cifar_file_is_a_data_error(tmp_path):
    write_fake_cifar10(tmp_path)
    batch = tmp_path / "cifar10" / "cifar-10-batches-bin" / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-10])
    with pytest.raises(DataError, match="data_batch_3.bin"):
        load_datasets("cifar10", tmp_path, download=False)


def test_cifar_label_out_of_range_is_a_data_error(tmp_path):
    write_fake_cifar10(tmp_path)
    batch = tmp_path / "cifar10" / "cifar-10-batches-bin" / "test_batch.bin"
    blob = bytearray(batch.read_bytes())
    blob[0] = 42
    batch.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="label 42"):
        load_datasets("cifar10", tmp_path, download=False)


def test_cifar_incomplete_folder_is_a_data_error(tmp_path):
    write_fake_cifar10(tmp_path)
    (tmp_path / "cifar10" / "cifar-10-batches-bin" / "data_batch_2.bin").unlink()
    with pytest.raises(DataError, match="--no-download"):
        load_datasets("cifar10", tmp_path, download=False)


def test_cifar_archive_is_extracted_offline(tmp_path, monkeypatch):
    train_y, _, _, _ = write_fake_cifar10(tmp_path / "src")
    root = tmp_path / "data" / "cifar10"
    root.mkdir(parents=True)
    with tarfile.open(root / "cifar-10-binary.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar10" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    monkeypatch.setattr(download, "md5", lambda path: cifar.CIFAR10.md5)  # pretend it is the official file
    splits = load_datasets("cifar10", tmp_path / "data", download=False)
    assert [splits.train_eval[i][1] for i in range(100)] == train_y.tolist()


def _failing_download(*args, **kwargs):
    raise URLError("no network in tests")


def test_download_failure_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "import_torchvision", lambda: None)
    monkeypatch.setattr(download, "fetch", _failing_download)
    with pytest.raises(DataError) as exc:
        load_datasets("cifar10", tmp_path, download=True)
    message = str(exc.value)
    assert "could not download CIFAR-10" in message and str(tmp_path / "cifar10") in message
    assert "\n" not in message


def test_present_data_is_not_downloaded(tmp_path, monkeypatch):
    write_fake_cifar10(tmp_path)
    monkeypatch.setattr(download, "fetch", _failing_download)
    assert len(load_datasets("cifar10", tmp_path, download=True).test) == 20


def test_broken_torchvision_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    with pytest.raises(DataError, match="torchvision cannot be imported"):
        load_datasets("mnist", tmp_path, download=True)
    assert not (tmp_path / "mnist").exists()


# ---------------------------------------------------------------------------------------------
# missing data
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, where", [
    ("cifar10", "cifar10"), ("cifar100", "cifar100"), ("mnist", "mnist"),
    ("fashion-mnist", "fashion-mnist"), ("svhn", "svhn"), ("tiny-imagenet", "tiny-imagenet-200"),
    ("imagenet", "imagenet"), ("imagefolder", "train"),
])
def test_missing_data_without_download(tmp_path, name, where):
    with pytest.raises(DataError) as exc:
        load_datasets(name, tmp_path, download=False)
    message = str(exc.value)
    assert str(tmp_path / where) in message
    assert "\n" not in message
    assert not any(tmp_path.iterdir())  # nothing was created


def test_imagefolder_info_needs_the_folder(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "train")):
        dataset_info("imagefolder", tmp_path)


# ---------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST / SVHN
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, folder, compress", [
    ("mnist", "mnist/MNIST/raw", False), ("fashion-mnist", "fashion-mnist/FashionMNIST/raw", True),
])
def test_mnist_idx_round_trip(tmp_path, name, folder, compress):
    raw = tmp_path / folder
    raw.mkdir(parents=True)
    rng = np.random.RandomState(2)
    x, tx = rng.randint(0, 256, (6, 28, 28)), rng.randint(0, 256, (4, 28, 28))
    y, ty = np.array([3, 1, 4, 1, 5, 9]), np.array([2, 6, 5, 3])
    write_idx(raw / "train-images-idx3-ubyte", x, compress)
    write_idx(raw / "train-labels-idx1-ubyte", y, compress)
    write_idx(raw / "t10k-images-idx3-ubyte", tx, compress)
    write_idx(raw / "t10k-labels-idx1-ubyte", ty, compress)
    splits = load_datasets(name, tmp_path, download=False)
    assert len(splits.train) == 6 and len(splits.test) == 4
    image, label = splits.train[4]
    assert image.shape == (1, 28, 28) and label == 5
    np.testing.assert_array_equal(as_bytes(image, splits.info)[0], x[4])
    np.testing.assert_array_equal(as_bytes(splits.test[2][0], splits.info)[0], tx[2])
    assert splits.test[2][1] == 5
    np.testing.assert_array_equal(splits.train[1][0], splits.train_eval[1][0])  # no augmentation


def write_fake_mnist(raw: Path, compress: bool = False):
    raw.mkdir(parents=True)
    rng = np.random.RandomState(2)
    x, tx = rng.randint(0, 256, (6, 28, 28)), rng.randint(0, 256, (4, 28, 28))
    y, ty = np.array([3, 1, 4, 1, 5, 9]), np.array([2, 6, 5, 3])
    write_idx(raw / "train-images-idx3-ubyte", x, compress)
    write_idx(raw / "train-labels-idx1-ubyte", y, compress)
    write_idx(raw / "t10k-images-idx3-ubyte", tx, compress)
    write_idx(raw / "t10k-labels-idx1-ubyte", ty, compress)
    return x, y, tx, ty


@pytest.mark.parametrize("damage", ["truncated", "bad header", "labels for images", "empty"])
def test_corrupt_mnist_file_is_a_one_line_data_error(tmp_path, damage):
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    write_fake_mnist(raw)
    images = raw / "train-images-idx3-ubyte"
    blob = images.read_bytes()
    if damage == "truncated":
        images.write_bytes(blob[:-5])
    elif damage == "bad header":
        images.write_bytes(b"\x00\x00\x0a\x03" + blob[4:])  # type byte 10 is no idx type
    elif damage == "labels for images":
        images.write_bytes((raw / "train-labels-idx1-ubyte").read_bytes())
    else:
        images.write_bytes(b"")
    with pytest.raises(DataError) as exc:
        load_datasets("mnist", tmp_path, download=False)
    message = str(exc.value)
    assert str(images) in message and "download MNIST again" in message and "\n" not in message


def test_mnist_gz_files_are_extracted_and_the_legacy_cache_is_never_unpickled(tmp_path, monkeypatch):
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    x, _, _, _ = write_fake_mnist(raw, compress=True)
    processed = raw.parent / "processed"  # torchvision's MNIST class would torch.load these
    processed.mkdir()
    (processed / "training.pt").write_bytes(b"not a tensor file")
    (processed / "test.pt").write_bytes(b"not a tensor file")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    splits = load_datasets("mnist", tmp_path, download=False)
    np.testing.assert_array_equal(as_bytes(splits.train_eval[2][0], splits.info)[0], x[2])
    names = sorted(p.name for p in raw.iterdir())
    assert names == sorted([n for n in names if n.endswith(".gz")] + [n[:-3] for n in names if n.endswith(".gz")])
    assert len(names) == 8  # each .gz beside its extracted file, no temporary file left over
    with gzip.open(raw / "t10k-images-idx3-ubyte.gz", "rb") as f:
        assert (raw / "t10k-images-idx3-ubyte").read_bytes() == f.read()


def test_svhn_mat_round_trip(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    root = tmp_path / "svhn"
    root.mkdir()
    rng = np.random.RandomState(3)
    x = rng.randint(0, 256, (32, 32, 3, 5)).astype(np.uint8)
    y = np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)
    scipy_io.savemat(root / "train_32x32.mat", {"X": x, "y": y})
    scipy_io.savemat(root / "test_32x32.mat", {"X": x[..., :2], "y": y[:2]})
    splits = load_datasets("svhn", tmp_path, download=False)
    assert len(splits.train) == 5 and len(splits.test) == 2
    assert [splits.train_eval[i][1] for i in range(5)] == [0, 1, 2, 0, 9]  # 10 means digit 0
    np.testing.assert_array_equal(as_bytes(splits.train_eval[3][0], splits.info),
                                  np.transpose(x[..., 3], (2, 0, 1)))
    assert splits.train[0][0].shape == (3, 32, 32)


def test_svhn_without_scipy_says_how_to_fix(tmp_path, monkeypatch):
    root = tmp_path / "svhn"
    root.mkdir()
    (root / "train_32x32.mat").write_bytes(b"x")
    (root / "test_32x32.mat").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(DataError, match="pip install scipy"):
        load_datasets("svhn", tmp_path, download=False)


def test_corrupt_svhn_is_a_data_error(tmp_path):
    pytest.importorskip("scipy.io")
    root = tmp_path / "svhn"
    root.mkdir()
    (root / "train_32x32.mat").write_bytes(b"not a mat file at all")
    (root / "test_32x32.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(DataError, match="train_32x32.mat"):
        load_datasets("svhn", tmp_path, download=False)


# ---------------------------------------------------------------------------------------------
# image folders
# ---------------------------------------------------------------------------------------------

COLORS = {"apple": (200, 10, 10), "banana": (230, 220, 40), "cherry": (120, 0, 60)}


def write_image_folder(root: Path, val_name: str = "val"):
    for cls, color in COLORS.items():
        for i in range(2):
            write_png(root / "train" / cls / f"{i}.png", solid(color))
        write_png(root / val_name / cls / "0.png", solid(color))
    (root / "train" / ".hidden").mkdir()  # ignored, like ImageFolder's hidden files


@pytest.mark.parametrize("val_name", ["val", "test"])
def test_imagefolder(tmp_path, val_name):
    write_image_folder(tmp_path, val_name)
    info = dataset_info("imagefolder", tmp_path)
    assert info.num_classes == 3 and info.image_size == 224 and info.imagenet_style
    splits = load_datasets("imagefolder", tmp_path, download=False)
    assert splits.info == info
    assert len(splits.train) == 6 and len(splits.test) == 3
    assert [splits.test[i][1] for i in range(3)] == [0, 1, 2]  # sorted class names
    x, y = splits.test[1]
    assert x.shape == (3, 224, 224) and y == 1
    np.testing.assert_allclose(denormalise(x, info)[:, 112, 112] * 255, COLORS["banana"], atol=0.5)
    torch.manual_seed(0)
    xa, ya = splits.train[2]
    assert xa.shape == (3, 224, 224) and ya == 1
    assert splits.train_eval[2][0].shape == (3, 224, 224)


def test_imagefolder_corrupt_image_is_a_data_error(tmp_path):
    write_image_folder(tmp_path)
    bad = tmp_path / "val" / "apple" / "0.png"
    bad.write_bytes(b"not a png")
    splits = load_datasets("imagefolder", tmp_path, download=False)
    with pytest.raises(DataError, match="cannot read image"):
        splits.test[0]


def test_imagefolder_val_class_unknown_to_train(tmp_path):
    write_image_folder(tmp_path)
    write_png(tmp_path / "val" / "durian" / "0.png", solid((1, 2, 3)))
    with pytest.raises(DataError, match="durian"):
        load_datasets("imagefolder", tmp_path, download=False)


def test_imagefolder_empty_class_folder_is_a_data_error(tmp_path):
    write_image_folder(tmp_path)
    (tmp_path / "train" / "banana" / "0.png").unlink()
    (tmp_path / "train" / "banana" / "1.png").rename(tmp_path / "train" / "banana" / "notes.txt")
    with pytest.raises(DataError) as exc:
        load_datasets("imagefolder", tmp_path, download=False)
    assert str(tmp_path / "train" / "banana") in str(exc.value) and "holds no images" in str(exc.value)


WNIDS = ["n01443537", "n01629819", "n02085620"]


def write_tiny_imagenet(data_dir: Path, original_val: bool):
    root = data_dir / "tiny-imagenet-200"
    rng = np.random.RandomState(4)
    images = {}
    for k, wnid in enumerate(WNIDS):
        for i in range(2):
            img = rng.randint(0, 256, (64, 64, 3))
            write_png(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", img)
            images[("train", k, i)] = img
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\n")
    lines = []
    for n, k in enumerate([2, 0, 1, 2]):
        img = rng.randint(0, 256, (64, 64, 3))
        if original_val:
            write_png(root / "val" / "images" / f"val_{n}.JPEG", img)
            lines.append(f"val_{n}.JPEG\t{WNIDS[k]}\t0\t0\t63\t63")
        else:
            write_png(root / "val" / WNIDS[k] / f"val_{n}.JPEG", img)
        images[("val", n)] = (k, img)
    if original_val:
        (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return images


@pytest.mark.parametrize("original_val", [True, False])
def test_tiny_imagenet_layouts(tmp_path, original_val):
    images = write_tiny_imagenet(tmp_path, original_val)
    splits = load_datasets("tiny-imagenet", tmp_path, download=False)
    info = splits.info
    assert info.num_classes == 200 and info.image_size == 64
    assert len(splits.train) == 6 and len(splits.test) == 4
    x, y = splits.train_eval[3]  # second class, second image
    assert y == 1
    np.testing.assert_array_equal(as_bytes(x, info), np.transpose(images[("train", 1, 1)], (2, 0, 1)))
    labels = sorted(splits.test[i][1] for i in range(4))
    assert labels == [0, 1, 2, 2]
    if original_val:  # original layout keeps the annotation order
        k, img = images[("val", 0)]
        x, y = splits.test[0]
        assert y == k
        np.testing.assert_array_equal(as_bytes(x, info), np.transpose(img, (2, 0, 1)))
    assert splits.train[0][0].shape == (3, 64, 64)


def test_tiny_imagenet_bad_annotation(tmp_path):
    write_tiny_imagenet(tmp_path, original_val=True)
    annotations = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="val_annotations.txt line 1"):
        load_datasets("tiny-imagenet", tmp_path, download=False)


# ---------------------------------------------------------------------------------------------
# digits, synthetic, validation split
# ---------------------------------------------------------------------------------------------


def test_digits_sizes_and_fixed_test_split():
    a = load_datasets("digits", seed=0)
    b = load_datasets("digits", seed=7, val_fraction=0.1)
    assert len(a.train) + len(a.test) == 1797
    assert a.info.num_classes == 10 and a.info.in_channels == 1
    x, y = a.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    ta, tb = (a.test.images, a.test.labels), (b.test.images, b.test.labels)
    assert torch.equal(ta[0], tb[0]) and torch.equal(ta[1], tb[1])  # independent of seed
    assert set(ta[1].tolist()) == set(range(10))
    pixels = denormalise(ta[0], a.info)
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6 and pixels.max() > 0.99


def test_digits_are_scikit_learns_data_and_split_read_without_importing_it():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.model_selection import train_test_split

    x, y = sklearn_datasets.load_digits(return_X_y=True)
    ours_x, ours_y = digits.read_digits()
    assert np.array_equal(x, ours_x) and np.array_equal(y, ours_y)
    expected = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=0)
    got = digits.stratified_split(y, test_fraction=0.2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))
    for seed, fraction in ((1, 0.2), (5, 0.37)):  # other draws of the tie-breaking RNG agree too
        expected = train_test_split(np.arange(len(y)), test_size=fraction, stratify=y, random_state=seed)
        assert all(np.array_equal(a, b) for a, b in zip(digits.stratified_split(y, fraction, seed), expected))
    code = "import sys; from force_cli.data import load_datasets; load_datasets('digits'); print('sklearn' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


def test_val_split_deterministic_and_disjoint():
    full = len(load_datasets("digits").train)
    a = load_datasets("digits", val_fraction=0.2, seed=3)
    b = load_datasets("digits", val_fraction=0.2, seed=3)
    c = load_datasets("digits", val_fraction=0.2, seed=4)
    assert a.val.indices == b.val.indices and a.train.indices == b.train.indices
    assert a.val.indices != c.val.indices
    assert set(a.val.indices).isdisjoint(a.train.indices)
    assert sorted(a.val.indices + a.train.indices) == list(range(full))
    assert len(a.val) == round(full * 0.2)
    assert a.train_eval.indices == a.train.indices


def test_val_split_of_augmented_data_is_plain(tmp_path):
    write_fake_cifar10(tmp_path)
    splits = load_datasets("cifar10", tmp_path, download=False, val_fraction=0.25, seed=1)
    assert len(splits.val) == 25 and len(splits.train) == len(splits.train_eval) == 75
    torch.manual_seed(0)
    assert all(torch.equal(splits.val[i][0], splits.val[i][0]) for i in range(5))  # no randomness
    assert any(not torch.equal(splits.train[i][0], splits.train_eval[i][0]) for i in range(10))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_bad_val_fraction(fraction):
    with pytest.raises(ConfigError, match="fraction"):
        load_datasets("digits", val_fraction=fraction)


def test_synthetic_is_deterministic():
    torch.manual_seed(1)
    a = load_datasets("synthetic")
    torch.manual_seed(2)
    torch.rand(10)
    b = load_datasets("synthetic")
    assert len(a.train) == 1024 and len(a.test) == 256
    for i in (0, 5, 1023):
        assert torch.equal(a.train[i][0], b.train[i][0]) and a.train[i][1] == b.train[i][1]
    assert torch.equal(a.test[17][0], b.test[17][0])
    assert not torch.equal(a.train[0][0], a.test[0][0])
    x, y = a.train[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10


def test_synthetic_classes_are_separable():
    splits = load_datasets("synthetic")
    xs, ys = map(torch.stack, zip(*[(x, torch.tensor(y)) for x, y in splits.train]))
    tx, ty = map(torch.stack, zip(*[(x, torch.tensor(y)) for x, y in splits.test]))
    means = torch.stack([xs[ys == c].mean(0) for c in range(10)]).flatten(1)
    predicted = torch.cdist(tx.flatten(1), means).argmin(1)
    assert (predicted == ty).float().mean() > 0.5


# ---------------------------------------------------------------------------------------------
# loaders and the batch stream
# ---------------------------------------------------------------------------------------------


def indices_dataset(n: int) -> TensorDataset:
    return TensorDataset(torch.arange(n), torch.arange(n) % 3)


def test_make_loader_seeded_shuffle():
    ds = indices_dataset(50)

    def order(seed):
        return torch.cat([x for x, _ in make_loader(ds, 8, shuffle=True, seed=seed)]).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == list(range(50))
    assert torch.cat([x for x, _ in make_loader(ds, 8, shuffle=False)]).tolist() == list(range(50))
    assert len(make_loader(ds, 8, shuffle=True, drop_last=True)) == 6


def test_make_loader_pins_memory_only_for_cuda():
    ds = indices_dataset(4)
    assert not make_loader(ds, 2, shuffle=False).pin_memory
    assert not make_loader(ds, 2, shuffle=False, device=torch.device("cpu")).pin_memory
    assert make_loader(ds, 2, shuffle=False, device=torch.device("cuda")).pin_memory


def test_loader_arguments_are_checked():
    with pytest.raises(ConfigError):
        make_loader(indices_dataset(4), 0, shuffle=False)
    with pytest.raises(ConfigError):
        BatchStream(indices_dataset(4), 2, workers=-1)


def batches_equal(a, b) -> bool:
    return all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))


def test_batch_stream_seeded():
    ds = load_datasets("digits").train
    a, b, c = BatchStream(ds, 32, seed=5), BatchStream(ds, 32, seed=5), BatchStream(ds, 32, seed=6)
    first = a.take(3)
    assert len(first) == 3 and first[0][0].shape == (32, 1, 8, 8)
    assert batches_equal(first, b.take(3))
    assert not batches_equal(first, c.take(3))


def test_batch_stream_crosses_epochs_with_new_permutations():
    stream = BatchStream(indices_dataset(10), 4, seed=0)
    seen = torch.cat([x for x, _ in stream.take(10)]).tolist()  # 40 items = 4 epochs
    epochs = [seen[i:i + 10] for i in range(0, 40, 10)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(10))
    assert epochs[0] != epochs[1]
    assert all(x.shape == (4,) for x, _ in stream.take(3))  # every batch full


def test_batch_stream_keeps_one_iterator(monkeypatch):
    created = []
    original = DataLoader.__iter__

    def counting_iter(self):
        created.append(1)
        return original(self)

    monkeypatch.setattr(DataLoader, "__iter__", counting_iter)
    stream = BatchStream(indices_dataset(10), 4, seed=0)
    stream.take(12)
    stream.next()
    assert len(created) == 1


def test_batch_stream_augmentation_is_seeded_and_leaves_global_rng(tmp_path):
    write_fake_cifar10(tmp_path)
    train = load_datasets("cifar10", tmp_path, download=False).train
    torch.manual_seed(123)
    a = BatchStream(train, 16, seed=9).take(3)
    state = torch.get_rng_state()
    b = BatchStream(train, 16, seed=9).take(3)
    assert torch.equal(state, torch.get_rng_state())  # the stream did not consume the global RNG
    torch.manual_seed(999)
    c = BatchStream(train, 16, seed=9).take(3)
    assert batches_equal(a, b) and batches_equal(a, c)


def test_batch_stream_with_workers_is_seeded():
    ds = load_datasets("synthetic").train
    a = BatchStream(ds, 16, seed=2, workers=2).take(3)
    b = BatchStream(ds, 16, seed=2, workers=2).take(3)
    assert batches_equal(a, b)
    assert batches_equal(a, BatchStream(ds, 16, seed=2).take(3))  # same batches as in-process


# ---------------------------------------------------------------------------------------------
# the batched transform path of in-memory datasets
# ---------------------------------------------------------------------------------------------


class PerSample(torch.utils.data.Dataset):
    """The same dataset without ``__getitems__``: DataLoader then transforms one image at a time."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


@pytest.mark.parametrize("augment,val_fraction", [(True, 0.0), (True, 0.25), (False, 0.0)])
def test_batched_transforms_give_the_per_sample_batches_bit_for_bit(tmp_path, augment, val_fraction):
    write_fake_cifar10(tmp_path)
    splits = load_datasets("cifar10", tmp_path, download=False, augment=augment, val_fraction=val_fraction)
    for dataset in (splits.train, splits.test):
        runs = []
        for wrapped in (dataset, PerSample(dataset)):
            torch.manual_seed(123)
            batches = list(DataLoader(wrapped, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(5)))
            runs.append((batches, torch.rand(1)))  # the global RNG must advance alike
        (batched, after_a), (per_sample, after_b) = runs
        assert len(batched) == len(per_sample) > 1
        for (xa, ya), (xb, yb) in zip(batched, per_sample):
            assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.dtype == torch.float32
        assert torch.equal(after_a, after_b)


def identifiable_image() -> torch.Tensor:
    """8x8, one channel, every pixel a different non-zero value: each padded crop, flipped or
    not, of it is a different image, so the crop offset and flip can be read off the output."""
    return (torch.arange(64, dtype=torch.uint8) + 1).view(1, 1, 8, 8)


def crop_and_flip_of(outputs: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row offset, column offset, flipped) of each output, by matching all 2 x 9 x 9 candidates."""
    padded = torch.nn.functional.pad(image[0, 0].float(), (4, 4, 4, 4))
    candidates = torch.stack([c for flip in (False, True) for i in range(9) for j in range(9)
                              for c in [padded[i:i + 8, j:j + 8].flip(-1) if flip else padded[i:i + 8, j:j + 8]]])
    pixels = torch.round(outputs[:, 0] * 255)  # mean 0, std 1: the output is pixel / 255
    match = (pixels[:, None] == candidates[None]).flatten(2).all(-1)
    assert torch.equal(match.sum(1), torch.ones(len(outputs), dtype=torch.long))  # exactly one each
    k = match.float().argmax(1)
    return (k % 81) // 9, k % 9, k >= 81


def test_batched_crops_and_flips_have_the_per_sample_distribution():
    """Over 4000 draws each, the batched path (from seed 0) and the per-sample path (from seed 1)
    agree on the per-pixel means (within 0.05 of the [0, 1] range), the flip rate (within 0.04;
    the standard deviation of the difference is 0.011) and the frequency of each of the 9 row and
    9 column offsets (within 0.03; sd 0.007), and both are near uniform. A batch-wide crop or flip
    (one draw for all images, as torchvision's v2 transforms do on a batch) fails all of these."""
    info = DatasetInfo(name="t", num_classes=2, in_channels=1, image_size=8, mean=(0.0,), std=(1.0,),
                       imagenet_style=False, downloadable=False)
    train_tf, plain_tf = transforms.tensor_transforms(info, crop=True, flip=True, augment=True)
    image, draws = identifiable_image(), 4000
    dataset = ArrayDataset(image.expand(draws, -1, -1, -1).contiguous(), torch.zeros(draws, dtype=torch.long), train_tf)
    torch.manual_seed(0)
    batched, _ = dataset.batch(torch.arange(draws))
    torch.manual_seed(1)
    per_sample = torch.stack([dataset[i][0] for i in range(draws)])
    assert (batched.mean(0) - per_sample.mean(0)).abs().max() < 0.05
    assert (batched.mean(0) - plain_tf(image[0])).abs().max() > 0.1  # augmentation moved the pixels
    (ib, jb, fb), (ip, jp, fp) = crop_and_flip_of(batched, image), crop_and_flip_of(per_sample, image)
    assert abs(fb.float().mean() - fp.float().mean()) < 0.04 and abs(fb.float().mean() - 0.5) < 0.04
    for b, p in ((ib, ip), (jb, jp)):
        freq_b, freq_p = torch.bincount(b, minlength=9) / draws, torch.bincount(p, minlength=9) / draws
        assert (freq_b - freq_p).abs().max() < 0.03 and (freq_b - 1 / 9).abs().max() < 0.03


def test_batch_of_one_seed_is_the_per_sample_draws_exactly():
    """Where the two paths are defined to agree (same seed), each crop and flip is the same."""
    info = DatasetInfo(name="t", num_classes=2, in_channels=1, image_size=8, mean=(0.0,), std=(1.0,),
                       imagenet_style=False, downloadable=False)
    train_tf, _ = transforms.tensor_transforms(info, crop=True, flip=True, augment=True)
    image = identifiable_image()
    dataset = ArrayDataset(image.expand(300, -1, -1, -1).contiguous(), torch.zeros(300, dtype=torch.long), train_tf)
    torch.manual_seed(3)
    batched, _ = dataset.batch(torch.arange(300))
    torch.manual_seed(3)
    per_sample = torch.stack([dataset[i][0] for i in range(300)])
    assert torch.equal(batched, per_sample)
    assert len(set(zip(*(t.tolist() for t in crop_and_flip_of(batched, image))))) > 100  # many different draws


@pytest.mark.parametrize("val_fraction, skip, moved", [(0.0, 0, False), (0.25, 0, False), (0.25, 2, True), (0.0, 3, True)])
def test_training_batches_of_in_memory_data_are_the_per_sample_ones_bit_for_bit(tmp_path, val_fraction, skip, moved):
    """``epoch_batches`` makes the batches of an in-memory dataset without a DataLoader, on the
    images' device (moved here to ``torch.device('cpu')`` explicitly); they, and torch's RNG
    after them, are those of the per-sample DataLoader path, also when resuming after ``skip``."""
    write_fake_cifar10(tmp_path)
    train = load_datasets("cifar10", tmp_path, download=False, val_fraction=val_fraction, seed=4).train
    fast = to_device(train, torch.device("cpu")) if moved else train
    runs = []
    for dataset in (fast, PerSample(train)):
        torch.manual_seed(11)
        batches = epoch_batches(dataset, 16, seed=2, epoch=3, skip=skip)
        runs.append((type(batches).__name__, list(batches), torch.get_rng_state()))
    (kind_a, a, rng_a), (kind_b, b, rng_b) = runs
    assert kind_a == "generator" and kind_b == "_SingleProcessDataLoaderIter"  # the two paths really differ
    assert len(a) == len(b) == -(-len(train) // 16) - skip
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.dtype == torch.float32 and ya.dtype == torch.int64
    assert torch.equal(rng_a, rng_b)


def test_in_memory_batches_of_no_indices_are_none():
    digits = load_datasets("digits").train
    assert list(epoch_batches(digits, 16, seed=0, epoch=1, skip=-(-len(digits) // 16))) == []
    assert [len(y) for _, y in epoch_batches(torch.utils.data.Subset(digits, [3, 1, 4]), 2, seed=0, epoch=1)] == [2, 1]


def test_resumed_epoch_continues_the_batches_of_an_uninterrupted_one(tmp_path):
    write_fake_cifar10(tmp_path)
    train = load_datasets("cifar10", tmp_path, download=False).train
    torch.manual_seed(5)
    batches = epoch_batches(train, 16, seed=1, epoch=2)
    next(batches), next(batches)
    state = torch.get_rng_state()  # what a partial checkpoint saves after 2 steps
    rest = list(batches)
    torch.set_rng_state(state)
    resumed = list(epoch_batches(train, 16, seed=1, epoch=2, skip=2))
    assert len(resumed) == len(rest) == 5
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(rest, resumed))


def test_in_memory_batches_are_made_on_the_images_device(tmp_path):
    """The meta device stands in for CUDA: every batch tensor must come out where the images are."""
    write_fake_cifar10(tmp_path)
    train = load_datasets("cifar10", tmp_path, download=False, val_fraction=0.25).train
    moved = to_device(train, torch.device("meta"))
    assert moved.indices == train.indices and moved.dataset.images.device.type == "meta"
    assert train.dataset.images.device.type == "cpu"  # the CPU copy is untouched
    for x, y in epoch_batches(moved, 16, seed=0, epoch=1):
        assert x.device.type == y.device.type == "meta" and x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32
    digits = load_datasets("digits").train
    assert to_device(digits, "meta").images.device.type == "meta"
    assert to_device(PerSample(digits), "meta").dataset is digits  # not in memory: left as it is


def test_splits_that_share_their_images_share_one_copy_on_the_device(tmp_path):
    """The training and validation parts of a training set hold the same images: moved with one
    ``moved`` memo (as the Trainer does), they keep one copy on the device; the test set its own."""
    write_fake_cifar10(tmp_path)
    splits = load_datasets("cifar10", tmp_path, download=False, val_fraction=0.25)
    assert splits.train.dataset.images is splits.val.dataset.images  # what makes sharing right
    moved: dict = {}
    train, val, test = (to_device(s, torch.device("meta"), moved) for s in (splits.train, splits.val, splits.test))
    assert train.dataset.images is val.dataset.images and train.dataset.labels is val.dataset.labels
    assert train.dataset.transform is splits.train.dataset.transform and val.dataset.transform is splits.val.dataset.transform
    assert test.images is not train.dataset.images and test.images.device.type == "meta"
    assert len(moved) == 4  # training images and labels, test images and labels


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_on_cuda_are_the_cpu_batches(tmp_path):
    """Same images, crops, flips and labels; pixel values equal within float rounding (README: the
    kernels of the two devices may round differently; expected, not measured, to be bit-identical)."""
    write_fake_cifar10(tmp_path)
    train = load_datasets("cifar10", tmp_path, download=False, val_fraction=0.25).train
    runs = []
    for dataset in (train, to_device(train, torch.device("cuda"))):
        torch.manual_seed(0)
        runs.append(list(epoch_batches(dataset, 16, seed=0, epoch=1)))
    assert len(runs[0]) == len(runs[1]) > 0
    for (xa, ya), (xb, yb) in zip(*runs):
        assert xb.is_cuda and torch.equal(ya, yb.cpu())
        torch.testing.assert_close(xb.cpu(), xa, rtol=0, atol=1e-6)  # a few ulps at |x| <= 3


def test_normalisation_divides_by_tensors_on_the_images_device():
    """CUDA divides by a Python number (a CPU scalar) as a multiplication by its reciprocal, unlike
    the CPU: the divisors must be tensors where the images are. The meta device stands in for CUDA."""
    from torch.utils._python_dispatch import TorchDispatchMode

    divisors = []

    class Divisions(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in ("div", "div_"):
                divisors.append(args[1])
            return func(*args, **(kwargs or {}))

    normalize = transforms.Normalize((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8, device="meta")
    with Divisions():
        normalize(images)
        normalize(images)
    assert len(divisors) == 4
    assert all(isinstance(d, torch.Tensor) and d.device.type == "meta" for d in divisors), divisors


def test_a_dataset_cannot_be_registered_without_training_defaults():
    """Adding a dataset is one DatasetSpec; leaving out its training defaults is an error, never a
    silent 350 epochs borrowed from CIFAR."""
    from force_cli.data.catalog import DATASETS, train_defaults
    from force_cli.data.types import DatasetSpec
    from force_cli.errors import UnknownNameError
    from force_cli.training.settings import complete_settings
    from force_cli.config import TrainSettings

    with pytest.raises(TypeError):
        DatasetSpec(DATASETS["digits"].info, "no defaults", "", "readers.digits:build_digits")
    with pytest.raises(UnknownNameError):
        train_defaults("not-a-dataset")
    with pytest.raises(UnknownNameError):
        complete_settings(TrainSettings(), "not-a-dataset")
    # the digits defaults, as written in the catalog's comment: 100 epochs of batches of 32, x0.1 after 50 and 75
    digits = complete_settings(TrainSettings(), "digits")
    assert (digits.epochs, digits.batch_size, digits.milestones, digits.val_fraction) == (100, 32, [50, 75], 0.1)
    assert complete_settings(TrainSettings(), "tiny-imagenet").val_fraction == 0.0


def test_every_dataset_names_a_reader_that_exists():
    import importlib

    from force_cli.data.catalog import DATASETS

    for spec in DATASETS.values():
        module, _, function = spec.reader.partition(":")
        assert callable(getattr(importlib.import_module(f"force_cli.data.{module}"), function)), spec.info.name


def test_the_validation_split_of_a_checkpoint_is_decided_once():
    """Training's recorded fraction, else pruning's, else the dataset's default."""
    from force_cli.data.holdout import checkpoint_fraction, default_fraction

    assert default_fraction("digits") == 0.1 and default_fraction("imagenet") == 0.0
    assert default_fraction("digits", 0.25) == 0.25
    assert checkpoint_fraction({"training": {"val_fraction": 0.3}, "pruning": {"val_fraction": 0.2}}, "digits") == 0.3
    assert checkpoint_fraction({"pruning": {"val_fraction": 0.2}}, "digits") == 0.2
    assert checkpoint_fraction({"pruning": {"val_fraction": True}}, "digits") == 0.1  # not a fraction: the default
    assert checkpoint_fraction({}, "tiny-imagenet") == 0.0
