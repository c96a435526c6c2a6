"""Atomic file writes: a file appears under its final name complete, or not at all.

The data goes to one temporary file of our own, ``.NAME.force-tmp`` in the same folder (so the
rename cannot cross file systems and a stale one is recognisable; ``sidecar`` shortens the name
when NAME is too long for that), is flushed to disk, then
renamed over the final name and the folder is flushed too. A temporary file left by a killed
command is removed by the next command that writes the same output (``remove_stale``).

The rename is the moment the new file replaces the old one. Ctrl-C and SIGTERM are held back
during it, so an interruption lands either before (the old file, if any, is untouched) or after
(the new file is complete); an interruption that lands after is marked on the exception
(``written``) so the message can say truthfully that the file was written.

They are held back at the level of Python's signal handlers, not by blocking them in the thread
(``pthread_sigmask``): the kernel delivers a signal sent to the process to any thread that does
not block it, and Python then runs the handler in the main thread anyway, at its next bytecode.
So as soon as a second thread exists (a pytest-xdist worker's I/O thread, torch's or CUDA's
threads), blocking the signal in the committing thread does not hold it back.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
from collections.abc import Iterable
from pathlib import Path

from force_cli.errors import OutputError

TEMP_SUFFIX = ".force-tmp"
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def temp_path(path: Path) -> Path:
    return sidecar(path, TEMP_SUFFIX)


def sidecar(path: Path, suffix: str) -> Path:
    """``.NAME<suffix>`` beside ``path`` (a temporary file, a lock). When that is longer than a file
    name may be (NAME_MAX: 255 bytes on most file systems) while NAME itself is not, NAME is cut
    and 16 hex digits of its hash added, ``.START~HASH<suffix>``: every valid output name has its
    own sidecar, and always the same one."""
    name = f".{path.name}{suffix}"
    limit = _name_max(path.parent)
    if len(os.fsencode(name)) <= limit:
        return path.parent / name
    digest = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]
    room = limit - len(os.fsencode(f".~{digest}{suffix}"))
    start = os.fsencode(path.name)[:room].decode("utf-8", "ignore")  # never half a character
    return path.parent / f".{start}~{digest}{suffix}"


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no such folder (refused later), or not POSIX
        return 255


def create(path: Path, flags: int) -> int:
    """``os.open`` for writing; the one place files are created (tests simulate failing disks here)."""
    return os.open(path, flags | os.O_CLOEXEC, 0o666)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def remove_stale(path: Path) -> None:
    """Delete the temporary file an earlier, killed command left for ``path`` (call under its lock)."""
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
        temp_path(path).unlink()


def fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a folder; the rename itself is still atomic
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, chunks: Iterable[bytes | memoryview] | bytes, what: str = "output") -> Path:
    """Write ``chunks`` to ``path`` atomically; an OS error becomes one-line ``OutputError``."""
    path = Path(path)
    if isinstance(chunks, (bytes, bytearray, memoryview)):
        chunks = [chunks]
    tmp = temp_path(path)
    try:
        fd = create(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    except OSError as exc:
        raise OutputError.from_os(exc, path, what) from None
    try:
        try:
            for chunk in chunks:
                write_all(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        if path.is_dir():
            raise IsADirectoryError(21, "Is a directory", str(path))
        _commit(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError.from_os(exc, path, what) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def _commit(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` over ``path`` with Ctrl-C and SIGTERM held back until the folder is synced."""
    try:
        with _signals_held_back():
            os.replace(tmp, path)
            fsync_folder(path.parent)
    except BaseException as exc:  # a held-back signal is handled as the block ends
        if not path.exists() or tmp.exists():
            raise
        exc.written = path  # the new file is complete: let the message say so
        raise


@contextlib.contextmanager
def _signals_held_back():
    """Note Ctrl-C and SIGTERM instead of handling them, and handle them when the block ends.

    Only the main thread can set handlers, and only there do Python handlers run, so in any other
    thread there is nothing to hold back: a signal interrupts the main thread, not this one. An
    ignored signal stays ignored; a default one (SIGTERM's) still ends the process, afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    previous = {}
    for sig in _SIGNALS:
        handler = signal.getsignal(sig)
        if handler is not signal.SIG_IGN and handler is not None:  # None: a handler set outside Python
            previous[sig] = signal.signal(sig, lambda signum, frame: noted.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(noted):
            signal.raise_signal(sig)  # handled here, by the handler just restored
