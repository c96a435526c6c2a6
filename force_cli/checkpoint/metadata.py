"""What every checkpoint's metadata records about how it was made, built once, and typed readers of
recorded values with their range checks, so that each is checked the same way wherever it is read.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from typing import Any

import torch

import force_cli
from force_cli.errors import CheckpointError

#: Seeds are what torch's generators take: integers in [0, 2**32 - 1].
SEED_MAX = 2**32 - 1


def provenance() -> dict[str, str]:
    """The version block every writer records: force-cli, torch and Python versions, and the time."""
    return {"force_cli_version": force_cli.__version__, "torch_version": torch.__version__,
            "python_version": platform.python_version(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def is_seed(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEED_MAX


def check_seed(value: Any, where: str, fix: str = "the file is corrupt") -> int:
    """A recorded seed, or a one-line CheckpointError naming ``where`` it was read and the ``fix``."""
    if not is_seed(value):
        raise CheckpointError(f"{where} records the seed {value!r}, not an integer in [0, {SEED_MAX}]; {fix}")
    return value
