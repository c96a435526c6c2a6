"""The epoch log of `force train --log-file`: appended to only when it is a force training log.

The log is one JSON record per line, ``{"epoch": 1, "lr": ..., "train_loss": ..., ...}``. An
existing file is appended to only when every line is such a record, so a JSON config, a sweep's
``sweep.json`` or ``results.jsonl``, or any other file the user points at by mistake is refused
rather than damaged. Its last line may lack its newline: a whole record gets the newline before
the next one is appended; a record cut short by a killed run (it starts like one of ours but is
not complete) is dropped, so every line stays a record. Reading is line by line with a bounded
line length, so a large or hostile file costs bounded memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO

from force_cli.errors import ConfigError, OutputError

#: Fields every record of ours holds, in every version (``loop.EPOCH_FIELDS`` is this version's full record,
#: epoch first); a log written by an older version is still appended to.
RECORD_FIELDS = ("epoch", "lr", "train_loss", "test_acc")
RECORD_START = b'{"epoch": '
#: A record of ours is a few hundred bytes; a longer line is not one.
MAX_LINE_BYTES = 1 << 16


def _is_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # ValueError: bad JSON, bad UTF-8, an int of too many digits
        return False
    return (isinstance(record, dict) and all(key in record for key in RECORD_FIELDS)
            and isinstance(record["epoch"], int) and not isinstance(record["epoch"], bool))


def _tail_fix(path: Path) -> int | None:
    """None when ``path`` may be appended to as it is; else the offset to cut it at, or -1 for
    "write a newline first". Raises ConfigError when the file is not a force training log."""
    offset = 0
    try:
        with open(path, "rb") as f:
            number = 0
            while line := f.readline(MAX_LINE_BYTES + 1):
                number += 1
                complete = line.endswith(b"\n")
                if not complete and len(line) > MAX_LINE_BYTES:
                    raise _not_a_log(path, f"line {number} is longer than any epoch record")
                if not line.strip():
                    pass
                elif complete and not _is_record(line):
                    raise _not_a_log(path, f"line {number} is not an epoch record")
                elif not complete:  # the last line, without its newline
                    if _is_record(line):
                        return -1
                    if line.startswith(RECORD_START):
                        return offset  # a record cut short by a killed run: drop it
                    raise _not_a_log(path, f"line {number} is not an epoch record")
                offset += len(line)
    except OSError as exc:
        raise OutputError.from_os(exc, path, "log") from None
    return None


def _not_a_log(path: Path, why: str) -> ConfigError:
    return ConfigError(f"--log-file '{path}' exists and is not a JSON-lines log of `force train` ({why}); "
                       "it is not appended to, give another path such as train.jsonl")


def check_appendable(path: Path) -> None:
    """Refuse an existing ``path`` that is not a force training log (a new or empty file is fine)."""
    if path.is_file():
        _tail_fix(path)


def open_for_append(path: Path) -> IO[str]:
    """The log opened for appending whole lines, its last line ended or dropped as needed."""
    try:
        fix = _tail_fix(path) if path.is_file() else None
        if fix is not None:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                if fix == -1:
                    os.lseek(fd, 0, os.SEEK_END)
                    os.write(fd, b"\n")
                else:
                    os.ftruncate(fd, fix)
            finally:
                os.close(fd)
        return open(path, "a", encoding="utf-8")
    except OSError as exc:
        raise OutputError.from_os(exc, path, "log") from None
