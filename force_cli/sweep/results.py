"""A sweep's results file, ``OUT/results.jsonl``, read and written here alone: one JSON line per
finished cell, appended by the process that runs the sweep; and ``OUT/sweep.json``, its title.

A cell's key (``cell_key``) names its line and its folder under ``OUT/cells/``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from force_cli.atomic import write_atomic
from force_cli.config import exact_text
from force_cli.errors import DataError, OutputError

RESULTS_FILE = "results.jsonl"
#: The sweep's own description (its recipe's title), so that `--report` shows what the sweep showed.
INFO_FILE = "sweep.json"


def write_info(out_dir: Path, title: str) -> None:
    write_atomic(out_dir / INFO_FILE, json.dumps({"title": title}).encode("utf-8"), "sweep description")


def read_title(out_dir: Path) -> str:
    """The title recorded by the sweep, or "" when there is none or it cannot be read."""
    try:
        info = json.loads((out_dir / INFO_FILE).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return ""
    title = info.get("title") if isinstance(info, dict) else None
    return title if isinstance(title, str) else ""


def cell_key(method: str, sparsity: float, seed: int) -> str:
    """A cell's key (its line's ``cell`` and its folder under ``cells/``): the method, the sparsity
    exactly (``config.exact_text``: two sparsities never share a key) and the seed."""
    return f"{method}-s{exact_text(sparsity)}-seed{seed}"


def filed_under_another_key(record: dict) -> bool:
    """Whether a results line's ``cell`` is not the key of its own method, sparsity and seed.

    Sweeps before keys were exact printed the sparsity to 6 digits, so 0.9 and 0.9000001 shared
    one key and one folder, and the second cell reused the first one's checkpoints: its line may
    hold the other cell's result. Such a line is not used, and its cell runs again."""
    seed = record.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        return False  # a line without its seed cannot be checked (hand-made): trusted as before
    return cell_key(record["method"], record["sparsity"], seed) != record["cell"]


#: Fields every results line must hold, with their types (what the table and the resume logic read).
RECORD_FIELDS = {"cell": str, "method": str, "sparsity": (int, float), "test_acc": (int, float)}


def read_results(path: Path) -> list[dict]:
    """The finished cells of a results file; a last line cut short by an interruption is ignored.

    Every other line must be a JSON object with ``RECORD_FIELDS``; anything else is a DataError
    naming the line, so a damaged file is reported rather than half-used. A line filed under
    another cell's key by an older version (``filed_under_another_key``) is left out.
    """
    if not path.exists():
        return []
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}; it must be the results file of a sweep") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.start}); restore it or delete it and re-run the sweep") from None
    records = []
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # ValueError: bad JSON, or an integer of more than 4300 digits
            if number == len(lines):  # interrupted while appending: that cell simply is not finished
                continue
            raise DataError(f"{path}: line {number} is not valid JSON; delete that line and re-run the sweep") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number} is not a JSON object; delete that line and re-run the sweep")
        for key, kind in RECORD_FIELDS.items():
            value = record.get(key)
            if isinstance(value, bool) or not isinstance(value, kind) or (
                    isinstance(value, float) and not math.isfinite(value) and key != "test_acc"):
                raise DataError(f"{path}: line {number} lacks a valid '{key}'; delete that line and re-run the sweep")
        if not filed_under_another_key(record):
            records.append(record)
    return records


def finished_cells(out_dir: Path) -> set[str]:
    return {r["cell"] for r in read_results(out_dir / RESULTS_FILE)}


def append_result(out_dir: Path, record: dict) -> None:
    """One line per finished cell, written in a single call and flushed to disk.

    A line cut short by an earlier interruption is dropped first, so it cannot swallow this one.
    """
    path = out_dir / RESULTS_FILE
    try:
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                write_atomic(path, data[: data.rfind(b"\n") + 1], "results file")
        with open(path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise OutputError.from_os(exc, path, "results file") from None
