"""Typed errors raised by the library.

Library code raises these; only the command line (``cli/status.py``) turns them into a one-line
message and an exit code: ``exit_code``, 2 for bad input unless a subclass says otherwise
(``RunFailed``: 1, a valid input whose run failed; ``Stopped``: 130 or 143, not an error at all).
Each message names the problem *and* the fix, because it is shown to the user verbatim.
"""

import errno
import signal


class ForceError(Exception):
    """Base class for every error reported as one line: bad user input (names, files, settings),
    exit code 2, unless a subclass (``RunFailed``) says otherwise."""

    exit_code = 2  # what the CLI exits with: 2 for bad input


class UnknownNameError(ForceError):
    """A model, dataset, method, schedule or init name that no registry knows."""

    def __init__(self, kind: str, name: str, known):
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(f"unknown {kind} '{name}'; known {kind}s are: {', '.join(self.known)}")


class ConfigError(ForceError):
    """A setting outside its valid range, an incompatible combination, or a bad recipe."""


class IncompatibleError(ConfigError):
    """A model/dataset pair that cannot work (input too small, wrong class count, ...)."""


class DataError(ForceError):
    """A dataset that is missing, unreadable, or cannot be downloaded."""


class CheckpointError(ForceError):
    """A checkpoint that is missing, corrupt, of an unknown format version, or does not fit its model."""


class DependencyError(ForceError):
    """A package force-cli needs for this job that is missing or cannot be imported (e.g. torchvision)."""


class DeviceError(ForceError):
    """A device that was asked for but is not available (e.g. CUDA on a CPU-only machine)."""


class RunFailed(ForceError):
    """The input was valid but the run failed (a diverged training, a disconnected network): exit code 1."""

    exit_code = 1


class DisconnectedError(RunFailed):
    """Pruning left no input-to-output path (or an empty output layer): the network cannot learn."""


class TrainingDiverged(RunFailed):
    """The training or an evaluation loss became NaN or infinite; the last good partial checkpoint is kept."""


class NonFiniteLoss(Exception):
    """Raised inside an epoch when the running loss is NaN or infinite; the trainer turns it into
    ``TrainingDiverged`` with the epoch and learning rate (never reaches the user as such)."""

    def __init__(self, value: float):
        super().__init__(f"the loss became {value}")
        self.value = value


#: The exit status of a run stopped by a signal, as a shell reports a process that signal ended
#: (128 + its number): 130 for Ctrl-C (SIGINT), 143 for SIGTERM. ``cli/status.py`` names them.
SIGNAL_EXIT = {"SIGINT": 128 + signal.SIGINT, "SIGTERM": 128 + signal.SIGTERM}


class Stopped(Exception):
    """A run stopped on request (Ctrl-C, SIGTERM, a ``StopFlag``) after keeping its progress.

    Not an error: the CLI prints the message without 'error:' and exits 130, or 143 for SIGTERM
    (``cli/status.py`` names them). ``announce`` is False on the torchrun ranks that stay silent.
    """

    def __init__(self, message: str, reason: str, *, announce: bool = True):
        super().__init__(message)
        self.reason, self.announce = reason, announce

    @property
    def exit_code(self) -> int:
        return SIGNAL_EXIT["SIGTERM" if self.reason == "SIGTERM" else "SIGINT"]


class TrainingInterrupted(Stopped):
    """Training stopped after saving its progress to ``partial`` (or the finished checkpoint)."""

    def __init__(self, message: str, partial, reason: str, *, announce: bool = True):
        super().__init__(message, reason, announce=announce)
        self.partial = partial


class OutputError(ForceError):
    """An output that cannot be written: read-only or full file system, no permission, a folder in the way."""

    _REASONS = {
        errno.EROFS: ("the file system is read-only", "choose a folder you can write to"),
        errno.EACCES: ("permission denied", "choose a folder you can write to"),
        errno.EPERM: ("the operation is not permitted", "choose a folder you can write to"),
        errno.ENOSPC: ("no space left on the device", "free some space or choose another disk"),
        errno.EDQUOT: ("the disk quota is exceeded", "free some space or choose another disk"),
        errno.EISDIR: ("it is a folder", "give a file name"),
        errno.ENOTDIR: ("a part of its path is a file, not a folder", "check the path"),
        errno.ENOENT: ("its folder does not exist", "create the folder first or choose another path"),
        errno.ENAMETOOLONG: ("the name is too long", "choose a shorter name"),
        errno.EFBIG: ("the file size limit is exceeded", "raise the limit (ulimit -f) or free the space it guards"),
    }

    @classmethod
    def from_os(cls, exc: OSError, path, what: str = "output") -> "OutputError":
        """One line for an OS error met while writing ``path``, naming the cause and the fix."""
        reason, fix = cls._REASONS.get(exc.errno, (exc.strerror or type(exc).__name__, "choose another path"))
        error = cls(f"cannot write {what} '{path}': {reason}; {fix}")
        error.errno = exc.errno
        return error


class ShrinkError(ConfigError):
    """A model that `force shrink` cannot rewrite exactly (an operation it does not know), named by layer."""
