"""Typed errors raised by the library.

Library code raises these; only ``cli.py`` turns them into a one-line message and exit code 2.
Each message names the problem *and* the fix, because it is shown to the user verbatim.
"""


class ForceError(Exception):
    """Base class for every error caused by user input (bad names, files, settings)."""

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


class DeviceError(ForceError):
    """A device that was asked for but is not available (e.g. CUDA on a CPU-only machine)."""


class DisconnectedError(ForceError):
    """Pruning left no input-to-output path (or an empty output layer): the network cannot learn.

    The input was valid but the run failed, as a diverged training does: exit code 1.
    """

    exit_code = 1
