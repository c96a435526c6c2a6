"""Fetching dataset files, and the one-line errors of missing or unreadable ones.

torchvision is imported lazily, here only: it costs about a second of start-up, and ``digits``,
``synthetic`` and the already-downloaded CIFAR files work without it. The readers call these
helpers through the module (``download.fetch(...)``), so a test can stub the network in one place.
"""

from __future__ import annotations

import contextlib
import hashlib
import sys
import tarfile
import zipfile
from pathlib import Path

import torch

from force_cli.errors import DataError

# Errors that torchvision, numpy, scipy, PIL and the OS raise for missing or corrupt files.
FILE_ERRORS = (OSError, RuntimeError, ValueError, EOFError, tarfile.TarError, zipfile.BadZipFile)


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def import_torchvision():
    """Import torchvision lazily; a broken install becomes a one-line DataError."""
    try:
        import torchvision
        import torchvision.datasets.utils  # noqa: F401
        import torchvision.transforms.v2  # noqa: F401
    except Exception as err:  # a torchvision built for another torch raises RuntimeError
        raise DataError(
            f"torchvision cannot be imported ({one_line(err)}); install the torchvision build "
            f"matching torch {torch.__version__}"
        ) from err
    return torchvision


def fetch(url: str, root: Path, *, md5: str, filename: str | None = None, extract: bool = True) -> None:
    """Download (and extract) one archive with torchvision's helpers; its prints go to stderr."""
    utils = import_torchvision().datasets.utils
    with contextlib.redirect_stdout(sys.stderr):
        if extract:
            utils.download_and_extract_archive(url, download_root=str(root), filename=filename, md5=md5)
        else:
            utils.download_url(url, str(root), filename=filename, md5=md5)


def make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(
            f"cannot create {path} ({one_line(err)}); pass --data-dir with a writable folder"
        ) from err


def md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
