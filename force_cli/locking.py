"""Exclusive locks on the files and folders a command writes, held for the whole command.

Two commands writing the same output at once would silently overwrite each other's result (and
one could delete the other's partial checkpoint). Each output therefore gets a sidecar lock file
(``.NAME.lock`` beside a file, ``.force.lock`` inside a folder), locked with ``flock``; a second writer is refused at once with one
line naming the holder. Creating the lock file is also the first write into the output folder, so
a folder that cannot be written is reported before any work starts. ``flock`` locks vanish when
the process dies, so a killed command never leaves a stale lock behind (only, at worst, an empty
lock file, which the next run reuses). A child forked while a lock is held (a DataLoader worker)
closes its copy of the lock at once, so that it cannot keep the lock of a killed parent alive.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from force_cli import atomic
from force_cli.errors import ConfigError, OutputError


#: The lock descriptors this process holds (process-wide, for the fork hook below). A forked child
#: shares them: were it to outlive this process (killed with -9), it would hold the lock until it exited.
_held_fds: set[int] = set()


def _close_in_forked_child() -> None:
    for fd in _held_fds:
        with contextlib.suppress(OSError):
            os.close(fd)  # only this copy: the parent's lock stays held until the parent closes its own
    _held_fds.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_forked_child)


def lock_path(target: Path) -> Path:
    """The lock file of ``target``: ``.NAME.lock`` beside a file, ``.force.lock`` inside a folder
    (so that locking a sweep's folder needs only that folder to be writable)."""
    target = Path(os.path.abspath(target))
    if target.is_dir():
        return target / ".force.lock"
    return atomic.sidecar(target, ".lock")  # shortened when NAME is near the longest a file name may be


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def _acquire(target: Path, what: str) -> int:
    if target.exists() and not (target.is_file() or target.is_dir()):  # /dev/null, a FIFO: no sidecar beside it
        raise ConfigError(f"{what} '{target}' exists and is not a regular file; choose another path")
    path = lock_path(target)
    for _ in range(10):  # retry if the holder removed the lock file between our open and flock
        try:
            fd = atomic.create(path, os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise OutputError.from_os(exc, target, what) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _holder(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"{what} '{target}' is being written by another force command{holder}; "
                                  f"wait for it to finish or choose another path") from None
            raise OutputError.from_os(exc, target, what) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
            except OSError as exc:  # a full disk, a file size limit: take the lock file away again
                _release(target, fd)
                raise OutputError.from_os(exc, target, what) from None
            _held_fds.add(fd)
            return fd
        os.close(fd)
    raise ConfigError(f"cannot lock {what} '{target}': its lock file keeps changing; retry")


def _release(target: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(lock_path(target))  # while still holding the lock, so no one else is holding it
    _held_fds.discard(fd)
    os.close(fd)


@contextlib.contextmanager
def hold(*targets: tuple[Path, str]) -> Iterator[None]:
    """Lock every ``(path, description)`` for the duration of the ``with`` block, or refuse."""
    held: list[tuple[Path, int]] = []
    try:
        for target, what in targets:
            target = Path(target)
            if any(os.path.abspath(target) == os.path.abspath(t) for t, _ in held):
                continue
            held.append((target, _acquire(target, what)))
        yield
    finally:
        for target, fd in reversed(held):
            _release(target, fd)


@contextlib.contextmanager
def hold_output(path: Path) -> Iterator[None]:
    """Lock the output file ``path`` (``hold``) and, once it is ours, delete the temporary file an
    earlier, killed command left for it (``atomic.remove_stale``): what every writing command does."""
    with hold((path, "output")):
        atomic.remove_stale(Path(path))
        yield
