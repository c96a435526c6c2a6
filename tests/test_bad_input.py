"""Bad input and faults, table-driven: every case must end with the expected exit code, one line
on stderr (no traceback), nothing on stdout, and no user file changed.

Each case runs `force` in-process on copies of a few small files (a pruned checkpoint, a partial
checkpoint of an interrupted run, recipes, a sweep folder). Faults that a test running as root
cannot make with permissions (a read-only folder, a full disk) are simulated at the one place
files are created and written (``force_cli.atomic.create`` / ``write_all``). Signals, pipes and
concurrency between processes are at the end, with subprocesses where the case needs one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from force_cli import atomic
from force_cli.checkpoint import load_checkpoint
from force_cli.cli import app
from force_cli.config import PruneConfig
from force_cli.locking import hold
from force_cli.pruning.job import prune_to_checkpoint
from force_cli.errors import TrainingInterrupted
from force_cli.training.job import train_checkpoint
from force_cli.training.loop import TrainCallbacks
from force_cli.training.state import StopFlag

runner = CliRunner()
BIG = str(2**64 - 1)


# --------------------------------------------------------------------------------------------
# The user's files, made once and copied into every case's folder
# --------------------------------------------------------------------------------------------


def read_raw(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def tampered(src: Path, dest: Path, meta: Callable[[dict], None] | None = None,
             tensors: Callable[[dict], None] | None = None) -> None:
    """Copy a checkpoint with its raw metadata (JSON text) and/or tensors edited, as an attacker would."""
    t, m = read_raw(src)
    if meta:
        meta(m)
    if tensors:
        tensors(t)
    save_file(t, str(dest), metadata=m)


def edit_json(key: str, fn: Callable) -> Callable[[dict], None]:
    def edit(m: dict) -> None:
        m[key] = json.dumps(fn(json.loads(m[key])))
    return edit


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("golden")
    init = root / "init.safetensors"
    prune_to_checkpoint(PruneConfig(model="lenet300", dataset="digits", sparsity=0.9, method="random"), init)
    flag = StopFlag()
    with pytest.raises(TrainingInterrupted):
        train_checkpoint(init, root / "run.safetensors", {"epochs": 2, "batch_size": 256}, device="cpu",
                         stop=flag, catch_signals=False,
                         callbacks=TrainCallbacks(on_batch=lambda *a: flag.set("test")))
    partial = root / "run.partial.safetensors"
    assert partial.exists()

    def resume(fn):
        return edit_json("training", lambda t: fn(t) or t)

    def set_resume(key, value):
        return resume(lambda t: t["resume"].__setitem__(key, value))

    crafted = {
        "huge.safetensors": (init, edit_json("model_args", lambda a: a | {"image_size": 100000}), None),
        "wide.safetensors": (init, edit_json("model_args", lambda a: a | {"image_size": 1000}), None),
        "argsnotdict.safetensors": (init, edit_json("model_args", lambda a: [1, 2]), None),
        "otherdata.safetensors": (init, lambda m: m.update(dataset="cifar10"), None),
        "hugeseed.safetensors": (init, lambda m: m.update(seed=str(2**70)), None),
        "trainmeta.safetensors": (init, lambda m: m.update(training=json.dumps({"seed": "x", "val_fraction": "y"})), None),
        "markup.safetensors": (init, lambda m: m.update(created="[/]", note="[link=https://example.org]x[/link]"), None),
        "escape.safetensors": (init, lambda m: m.update(created="\x1b[2J\x1b]0;owned\x07"), None),
        "nan.safetensors": (init, lambda m: m.update(target_sparsity="NaN"), None),
        "nanweights.safetensors": (init, None, lambda t: t.update({"fc3.bias": torch.full_like(t["fc3.bias"], math.nan)})),
        "lying.safetensors": (init, lambda m: m.update(achieved_sparsity="0.99"), None),
        "future.safetensors": (init, lambda m: m.update(format="force-ckpt/9"), None),
        "stage.safetensors": (init, lambda m: m.update(stage="final"), None),
        "extra.safetensors": (init, None, lambda t: t.update({"fc9.weight": torch.zeros(2)})),
        "missing.safetensors": (init, None, lambda t: t.pop("fc1.bias")),
        "intmask.safetensors": (init, None, lambda t: t.update({"mask:fc1.weight": t["mask:fc1.weight"].to(torch.uint8)})),
        "hist.partial.safetensors": (partial, lambda m: m.update(history=json.dumps("oops")), None),
        "optshape.partial.safetensors": (partial, None, lambda t: t.update(
            {"state:optimizer.0.momentum_buffer": torch.zeros(3, 3)})),
        "rngsize.partial.safetensors": (partial, None, lambda t: t.update({"state:rng.cpu": torch.zeros(7, dtype=torch.uint8)})),
        "rngdtype.partial.safetensors": (partial, None, lambda t: t.update(
            {"state:rng.cpu": t["state:rng.cpu"].to(torch.float32)})),
        "negepoch.partial.safetensors": (partial, set_resume("epoch", -1), None),
        "negbatch.partial.safetensors": (partial, resume(lambda t: t["resume"]["totals"].__setitem__("batches", -3)), None),
        "bigbatch.partial.safetensors": (partial, resume(lambda t: t["resume"]["totals"].__setitem__("batches", 10**6)), None),
        "seed.partial.safetensors": (partial, resume(lambda t: t.__setitem__("seed", 2**70)), None),
        "groups.partial.safetensors": (partial, resume(lambda t: t["resume"]["optimizer"].__setitem__("param_groups", [])), None),
        "nostate.partial.safetensors": (partial, None, lambda t: [t.pop(k) for k in list(t) if k.startswith("state:")]),
    }
    for name, (src, meta, tensors) in crafted.items():
        tampered(src, root / name, meta, tensors)
    (root / "exp[final].safetensors").write_bytes(init.read_bytes())
    (root / "text.safetensors").write_text("not a checkpoint\n")
    (root / "truncated.safetensors").write_bytes(init.read_bytes()[:1000])
    (root / "binary.log").write_bytes(b"\x00\x01binary")
    (root / "afile").write_text("a file where a folder is expected\n")
    raw = root / "badmnist" / "mnist" / "MNIST" / "raw"  # idx files whose images file is truncated
    raw.mkdir(parents=True)
    for split, n in (("train", 4), ("t10k", 2)):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", n, 28, 28) + bytes(n * 784 - 9))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", n) + bytes(n))
    (root / "ro").mkdir()
    (root / "full").mkdir()
    (root / "adir").mkdir()
    recipes = {
        "latin1.yaml": "model: lenet300\n# caf\xe9\n".encode("latin-1"),
        "tag.yaml": b"model: !!python/object/apply:os.system ['true']\n",
        "bigseed.yaml": f"model: lenet300\ndataset: digits\nseed: {2**70}\n".encode(),
        "sweep-bigseed.yaml": b"model: lenet300\ndataset: digits\nsweep:\n  sparsities: [0.9]\n  seeds: [1180591620717411303424]\n",
        "sweep-nomodel.yaml": b"dataset: digits\nsweep:\n  sparsities: [0.9]\n",
        "sweep-sparsity.yaml": b"model: lenet300\ndataset: digits\nsweep:\n  sparsities: [1.5]\n",
        "sweep-ok.yaml": b"model: lenet300\ndataset: digits\nsweep:\n  methods: [random]\n  sparsities: [0.9]\n",
        "sweep-train.yaml": b"model: lenet300\ndataset: digits\ntrain:\n  lr: -1.0\nsweep:\n  sparsities: [0.9]\n",
        "steps.yaml": b"model: lenet300\ndataset: digits\nprune:\n  steps: 1000000000\n",
    }
    for name, data in recipes.items():
        (root / name).write_bytes(data)
    good = {"cell": "force-s0.9-seed0", "method": "force", "sparsity": 0.9, "seed": 0, "test_acc": 0.8}
    for name, lines in {
        "rep-latin1": [b"\xff\xfe\n"],
        "rep-array": [b"[1, 2]\n", json.dumps(good).encode() + b"\n"],
        "rep-fields": [json.dumps({"cell": "x"}).encode() + b"\n", json.dumps(good).encode() + b"\n"],
        "rep-mdfolder": [json.dumps(good).encode() + b"\n"],
    }.items():
        (root / name).mkdir()
        (root / name / "results.jsonl").write_bytes(b"".join(lines))
    (root / "rep-mdfolder" / "results.md").mkdir()
    return root


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) and a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


# --------------------------------------------------------------------------------------------
# Faults at the one place files are created and written
# --------------------------------------------------------------------------------------------


def fail_create_in(folder: str, err: int, only_temp: bool = False):
    real = atomic.create

    def create(path, flags):
        path = Path(path)
        if path.parent.name == folder and (not only_temp or path.name.endswith(atomic.TEMP_SUFFIX)):
            raise OSError(err, os.strerror(err), str(path))
        return real(path, flags)
    return create


def disk_full(fd, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def read_only(tmp, mp):
    mp.setattr(atomic, "create", fail_create_in("ro", errno.EROFS))


def no_permission(tmp, mp):
    mp.setattr(atomic, "create", fail_create_in("ro", errno.EACCES))


def full_disk(tmp, mp):
    mp.setattr(atomic, "write_all", disk_full)


def full_at_final_save(tmp, mp):
    mp.setattr(atomic, "create", fail_create_in("full", errno.ENOSPC, only_temp=True))
    mp.setattr(tempfile, "tempdir", str(tmp.parent))  # the rescued result goes beside the test's folder


def locked(relative: str):
    """Another force command holds the lock on this output (a lock from another open file
    description conflicts exactly as one from another process does)."""
    def prepare(tmp, mp):
        stack = hold((tmp / relative, "output"))
        stack.__enter__()
        mp.setattr(sys.modules[__name__], "_held", stack, raising=False)
    return prepare


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------

PRUNE = ["prune", "-m", "lenet300", "-d", "digits", "-s", "0.9", "--method", "random", "-q"]
TRAIN = ["train", "{init}", "--epochs", "1", "--device", "cpu", "-q"]


@dataclass
class Case:
    id: str
    args: list[str]
    fragment: str
    code: int = 2
    prepare: Callable | None = None
    new_files: tuple[str, ...] = ()  # files the command may create (a partial checkpoint it saved)
    stderr_lines: int = 1


CASES = [
    # prune: names, ranges, paths
    Case("prune-markup-model", ["prune", "-m", "[/]", "-s", "0.9"], "unknown model '[/]'"),
    Case("prune-escape-model", ["prune", "-m", "\x1b[31mred", "-s", "0.9"], "\\x1b[31mred"),
    Case("prune-seed-2^64-1", PRUNE + ["--seed", BIG, "-o", "{tmp}/x.safetensors"], "--seed must be at most"),
    Case("prune-seed-2^70", PRUNE + ["--seed", str(2**70), "-o", "{tmp}/x.safetensors"], "--seed must be at most"),
    Case("prune-seed-negative", PRUNE + ["--seed", str(-2**63 - 1), "-o", "{tmp}/x.safetensors"], "--seed must be at least 0"),
    Case("prune-steps-1e9", PRUNE + ["--steps", "1000000000", "-o", "{tmp}/x.safetensors"], "--steps must be at most"),
    Case("prune-batches-0", PRUNE + ["--batches", "0", "-o", "{tmp}/x.safetensors"], "--batches must be at least 1"),
    Case("prune-batch-size-huge", PRUNE + ["--batch-size", str(10**12), "-o", "{tmp}/x.safetensors"], "--batch-size must be at most"),
    Case("prune-sparsity-nan", ["prune", "-m", "lenet300", "-d", "digits", "-s", "nan"], "outside [0, 1)"),
    Case("prune-sparsity-text", ["prune", "-m", "lenet300", "-s", "lots"], "Invalid value for '--sparsity'"),
    Case("prune-dataset-slash", ["prune", "-m", "lenet300", "-d", "foo/bar", "-s", "0.9"], "unknown dataset 'foo/bar'"),
    Case("prune-empty-output", PRUNE + ["-o", ""], "the path is empty"),
    Case("prune-output-folder", PRUNE + ["-o", "{tmp}/adir"], "is a folder"),
    Case("prune-output-exists", PRUNE + ["-o", "{init}"], "already exists"),
    Case("prune-output-under-file", PRUNE + ["-o", "{tmp}/afile/x.safetensors"], "is a file, not a folder"),
    Case("prune-output-missing-folder", PRUNE + ["-o", "{tmp}/nope/x.safetensors"], "does not exist"),
    Case("prune-output-locked", PRUNE + ["-o", "{tmp}/race.safetensors"], "being written by another force command",
         prepare=locked("race.safetensors")),
    Case("prune-read-only-folder", PRUNE + ["-o", "{tmp}/ro/x.safetensors"], "read-only", prepare=read_only),
    Case("prune-no-permission", PRUNE + ["-o", "{tmp}/ro/x.safetensors"], "permission denied", prepare=no_permission),
    Case("prune-disk-full", PRUNE + ["-o", "{tmp}/x.safetensors"], "no space left", prepare=full_disk),
    Case("prune-disk-full-overwrite", PRUNE + ["-o", "{init}", "--overwrite"], "no space left", prepare=full_disk),
    Case("prune-unknown-option", ["prune", "--bogus"], "No such option"),
    Case("prune-corrupt-mnist", ["prune", "-m", "lenet300", "-d", "mnist", "--data-dir", "{tmp}/badmnist", "--no-download",
                                 "-s", "0.9", "-o", "{tmp}/x.safetensors"], "train-images-idx3-ubyte is not a valid idx file"),
    # recipes
    Case("recipe-not-utf8", ["prune", "--recipe", "{tmp}/latin1.yaml", "-s", "0.9"], "not UTF-8"),
    Case("recipe-python-tag", ["prune", "--recipe", "{tmp}/tag.yaml", "-s", "0.9"], "YAML tag that recipes do not allow"),
    Case("recipe-seed-2^70", ["prune", "--recipe", "{tmp}/bigseed.yaml", "-s", "0.9"], "'seed' must be at most"),
    Case("recipe-steps-1e9", ["prune", "--recipe", "{tmp}/steps.yaml", "-s", "0.9"], "'steps' must be at most"),
    Case("recipe-missing", ["prune", "--recipe", "{tmp}/nope.yaml", "-s", "0.9"], "does not exist"),
    Case("recipe-folder", ["prune", "--recipe", "{tmp}/adir", "-s", "0.9"], "cannot read recipe"),
    Case("recipe-empty-path", ["prune", "--recipe", "", "-s", "0.9"], "the path is empty"),
    # train: the log, the outputs, the input
    Case("train-log-is-input", TRAIN + ["--log-file", "{init}"], "is the input checkpoint"),
    Case("train-log-is-output", TRAIN + ["-o", "{tmp}/t.safetensors", "--log-file", "{tmp}/t.safetensors"], "is the output"),
    Case("train-log-is-partial", TRAIN + ["-o", "{tmp}/t.safetensors", "--log-file", "{tmp}/t.partial.safetensors"],
         "is the partial checkpoint"),
    Case("train-log-checkpoint-name", TRAIN + ["--log-file", "{tmp}/other.safetensors"], "checkpoint's name"),
    Case("train-log-binary-file", TRAIN + ["--log-file", "{tmp}/binary.log"], "not a JSON-lines log"),
    Case("train-log-folder", TRAIN + ["--log-file", "{tmp}/adir"], "is a folder"),
    Case("train-output-is-input", TRAIN + ["-o", "{init}", "--overwrite"], "would overwrite the input"),
    Case("train-empty-checkpoint", ["train", ""], "the path is empty"),
    Case("train-no-checkpoint", ["train"], "no checkpoint given"),
    Case("train-resume-not-partial", ["train", "--resume", "{init}"], "holds no training state"),
    Case("train-partial-without-resume", ["train", "{partial}"], "force train --resume"),
    Case("train-both", ["train", "{init}", "--resume", "{partial}"], "not both"),
    Case("train-resume-without-value", ["train", "{init}", "--resume"], "requires an argument"),
    Case("train-output-locked", TRAIN, "being written by another force command", prepare=locked("init-trained.safetensors")),
    Case("train-seed-2^64-1", TRAIN + ["--seed", BIG], "--seed must be at most"),
    Case("train-recorded-seed-2^70", ["train", "{tmp}/hugeseed.safetensors", "--epochs", "1"], "records the seed"),
    Case("train-epochs-1e9", ["train", "{init}", "--epochs", "1000000000"], "--epochs must be at most"),
    Case("train-workers-huge", TRAIN + ["--workers", "100000"], "--workers must be at most"),
    Case("train-save-every-negative", TRAIN + ["--save-every", "-1"], "--save-every must be at least 0"),
    Case("train-milestones-text", TRAIN + ["--milestones", "a,b"], "--milestones must be"),
    Case("train-read-only-output", TRAIN + ["--save-every", "0", "-o", "{tmp}/ro/t.safetensors"], "read-only",
         prepare=read_only),
    Case("train-final-save-disk-full", TRAIN + ["-o", "{tmp}/full/t.safetensors"], "saved to", prepare=full_at_final_save),
    *([Case("train-log-dev-full", ["train", "{init}", "--epochs", "2", "--device", "cpu", "-q", "--log-file", "/dev/full",
                                   "-o", "{tmp}/t.safetensors"], "no space left", new_files=("t.partial.safetensors",))]
      if os.path.exists("/dev/full") else []),
    # train --resume: a tampered partial checkpoint
    Case("resume-history-type", ["train", "--resume", "{tmp}/hist.partial.safetensors"], "history"),
    Case("resume-optimizer-shape", ["train", "--resume", "{tmp}/optshape.partial.safetensors"], "optimizer state"),
    Case("resume-rng-size", ["train", "--resume", "{tmp}/rngsize.partial.safetensors"], "RNG state"),
    Case("resume-rng-dtype", ["train", "--resume", "{tmp}/rngdtype.partial.safetensors"], "RNG state"),
    Case("resume-negative-epoch", ["train", "--resume", "{tmp}/negepoch.partial.safetensors"], "epoch -1"),
    Case("resume-negative-batch", ["train", "--resume", "{tmp}/negbatch.partial.safetensors"], "running totals"),
    Case("resume-batch-beyond-epoch", ["train", "--resume", "{tmp}/bigbatch.partial.safetensors"], "batch index"),
    Case("resume-optimizer-groups", ["train", "--resume", "{tmp}/groups.partial.safetensors"], "does not fit the model"),
    Case("resume-seed-2^70", ["train", "--resume", "{tmp}/seed.partial.safetensors"], "records the seed"),
    Case("resume-no-state", ["train", "--resume", "{tmp}/nostate.partial.safetensors"], "lost its training state"),
    # eval
    Case("eval-empty-path", ["eval", ""], "the path is empty"),
    Case("eval-missing", ["eval", "{tmp}/nope.safetensors"], "does not exist"),
    Case("eval-folder", ["eval", "{tmp}/adir"], "is not a file"),
    Case("eval-text-file", ["eval", "{tmp}/text.safetensors"], "cannot read checkpoint"),
    Case("eval-truncated", ["eval", "{tmp}/truncated.safetensors"], "truncated"),
    Case("eval-batch-size-0", ["eval", "{init}", "--batch-size", "0"], "--batch-size must be at least 1"),
    Case("eval-batch-size-huge", ["eval", "{init}", "--batch-size", str(10**12)], "--batch-size must be at most"),
    Case("eval-split", ["eval", "{init}", "--split", "dev"], "unknown split"),
    Case("eval-crafted-training-metadata", ["eval", "{tmp}/trainmeta.safetensors", "--split", "val"], "the file is corrupt"),
    # inspect: crafted checkpoints
    Case("inspect-huge-image-size", ["inspect", "{tmp}/huge.safetensors"], "'image_size' is 100000"),
    Case("inspect-shape-mismatch", ["inspect", "{tmp}/wide.safetensors"], "'fc1.weight' has shape"),
    Case("inspect-model-args-list", ["inspect", "{tmp}/argsnotdict.safetensors"], "model_args"),
    Case("inspect-args-contradict-dataset", ["inspect", "{tmp}/otherdata.safetensors"], "1x8x8 inputs but its dataset"),
    Case("inspect-future-format", ["inspect", "{tmp}/future.safetensors"], "force-ckpt/9"),
    Case("inspect-unknown-stage", ["inspect", "{tmp}/stage.safetensors"], "unknown stage"),
    Case("inspect-extra-tensor", ["inspect", "{tmp}/extra.safetensors"], "'fc9.weight'"),
    Case("inspect-missing-tensor", ["inspect", "{tmp}/missing.safetensors"], "lacks the weight 'fc1.bias'"),
    Case("inspect-mask-not-bool", ["inspect", "{tmp}/intmask.safetensors"], "not bool"),
    # sweep and its report
    Case("sweep-out-is-file", ["sweep", "{tmp}/sweep-ok.yaml", "--out", "{tmp}/afile"], "is a file, not a folder"),
    Case("sweep-recipe-not-utf8", ["sweep", "{tmp}/latin1.yaml"], "not UTF-8"),
    Case("sweep-seeds-2^70", ["sweep", "{tmp}/sweep-bigseed.yaml", "--out", "{tmp}/s"], "'seeds' must be at most"),
    Case("sweep-no-model", ["sweep", "{tmp}/sweep-nomodel.yaml", "--out", "{tmp}/s"], "add 'model: NAME'"),
    Case("sweep-sparsity", ["sweep", "{tmp}/sweep-sparsity.yaml", "--out", "{tmp}/s"], "outside [0, 1)"),
    Case("sweep-no-recipe", ["sweep"], "give a recipe"),
    Case("sweep-jobs-0", ["sweep", "{tmp}/sweep-ok.yaml", "--out", "{tmp}/s", "--jobs", "0"], "--jobs must be"),
    Case("sweep-jobs-negative", ["sweep", "{tmp}/sweep-ok.yaml", "--out", "{tmp}/s", "-j", "-2"], "at least 1"),
    Case("sweep-bad-train-settings", ["sweep", "{tmp}/sweep-train.yaml", "--out", "{tmp}/s"], "--lr must be a positive number"),
    Case("sweep-folder-locked", ["sweep", "{tmp}/sweep-ok.yaml", "--out", "{tmp}/adir", "-q"],
         "being written by another force command", prepare=locked("adir")),
    Case("report-not-a-folder", ["sweep", "--report", "{tmp}/afile"], "not a folder"),
    Case("report-results-not-utf8", ["sweep", "--report", "{tmp}/rep-latin1"], "not UTF-8"),
    Case("report-line-not-object", ["sweep", "--report", "{tmp}/rep-array"], "line 1 is not a JSON object"),
    Case("report-line-missing-fields", ["sweep", "--report", "{tmp}/rep-fields"], "lacks a valid 'method'"),
    Case("report-results-md-folder", ["sweep", "--report", "{tmp}/rep-mdfolder"], "it is a folder"),
]


def expand(args: list[str], tmp: Path) -> list[str]:
    names = {"{tmp}": str(tmp), "{init}": str(tmp / "init.safetensors"), "{partial}": str(tmp / "run.partial.safetensors")}
    out = []
    for a in args:
        for key, value in names.items():
            a = a.replace(key, value)
        out.append(a)
    return out


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions; the table simulates EROFS/EACCES")
def test_a_really_read_only_folder_is_refused_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        result = runner.invoke(app, PRUNE + ["-o", str(ro / "x.safetensors")])
        assert result.exit_code == 2 and "permission denied" in result.stderr
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


def test_the_table_is_large_enough():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_or_fault_is_one_line_and_changes_no_file(case, golden, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(golden, work)
    monkeypatch.chdir(work)
    if case.prepare:
        case.prepare(work, monkeypatch)
    before = snapshot(work)
    try:
        result = runner.invoke(app, expand(case.args, work))
        after = snapshot(work)  # while another command's lock, if any, is still held
    finally:
        held = getattr(sys.modules[__name__], "_held", None)
        if held is not None:
            held.__exit__(None, None, None)
            monkeypatch.delattr(sys.modules[__name__], "_held")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == case.code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr
    assert len(lines) == case.stderr_lines, result.stderr
    assert lines[-1].startswith("error: ") and case.fragment in lines[-1], lines
    assert result.stdout == ""
    assert {k: v for k, v in after.items() if k not in case.new_files} == before


# --------------------------------------------------------------------------------------------
# Untrusted text is printed literally; --json is strict JSON; altered masks are flagged
# --------------------------------------------------------------------------------------------


def run_inspect(golden, tmp_path, name, *extra):
    work = tmp_path / "work"
    shutil.copytree(golden, work)
    before = snapshot(work)
    result = runner.invoke(app, ["inspect", str(work / name), *extra])
    assert snapshot(work) == before
    return result


def test_metadata_markup_is_shown_literally_not_as_style_or_link(golden, tmp_path):
    result = run_inspect(golden, tmp_path, "markup.safetensors")
    assert result.exit_code == 0, result.stderr
    assert "[/]" in result.stdout and "[link=https://example.org]x[/link]" in result.stdout
    assert "\x1b]8;" not in result.stdout  # no terminal hyperlink


def test_escape_sequences_in_metadata_are_made_visible(golden, tmp_path):
    result = run_inspect(golden, tmp_path, "escape.safetensors")
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "\\x1b[2J" in result.stdout


def test_a_file_name_with_brackets_is_reported_as_it_is(golden, tmp_path):
    result = run_inspect(golden, tmp_path, "exp[final].safetensors")
    assert result.exit_code == 0, result.stderr
    assert "exp[final].safetensors" in result.stdout


def test_json_is_strict_even_with_nan_metadata(golden, tmp_path):
    result = run_inspect(golden, tmp_path, "nan.safetensors", "--json")
    assert result.exit_code == 0, result.stderr

    def refuse(constant):
        raise AssertionError(f"bare {constant} in --json output")
    report = json.loads(result.stdout, parse_constant=refuse)
    assert report["metadata"]["target_sparsity"] is None


def test_masks_that_contradict_the_metadata_get_one_warning(golden, tmp_path):
    result = run_inspect(golden, tmp_path, "lying.safetensors", "--json")
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning:") and "99.0000%" in lines[0], lines
    report = json.loads(result.stdout)
    assert report["warnings"] and math.isclose(report["totals"]["sparsity"], 0.9, abs_tol=1e-4)


# --------------------------------------------------------------------------------------------
# Atomic writes: stale temporary files, a signal during the final rename, a rescued result
# --------------------------------------------------------------------------------------------


def test_a_stale_temporary_file_of_the_same_output_is_cleaned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "x.safetensors"
    stale = atomic.temp_path(out)
    stale.write_bytes(b"left by a killed run")
    result = runner.invoke(app, PRUNE + ["-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert not stale.exists() and sorted(os.listdir(tmp_path)) == ["x.safetensors"]
    load_checkpoint(out)


def test_holding_an_output_locks_it_and_cleans_its_stale_temporary_file(tmp_path):
    """What prune, export, shrink and ablate do first (locking.hold_output)."""
    from force_cli import locking

    out = tmp_path / "y.safetensors"
    stale = atomic.temp_path(out)
    stale.write_bytes(b"left by a killed run")
    with locking.hold_output(out):
        assert not stale.exists() and locking.lock_path(out).exists()
    assert os.listdir(tmp_path) == []


def test_ctrl_c_during_the_final_rename_says_truthfully_that_the_file_was_written(tmp_path, monkeypatch):
    real_replace = os.replace

    def replace_then_ctrl_c(src, dst):
        os.kill(os.getpid(), signal.SIGINT)  # held back until the rename and folder sync are done
        real_replace(src, dst)
    monkeypatch.setattr(atomic.os, "replace", replace_then_ctrl_c)
    out = tmp_path / "x.safetensors"
    result = runner.invoke(app, PRUNE + ["-o", str(out)])
    assert result.exit_code == 130, (result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "written completely" in lines[0] and not lines[0].startswith("error"), lines
    load_checkpoint(out)  # complete, as the message says
    assert sorted(os.listdir(tmp_path)) == ["x.safetensors"]


def test_ctrl_c_during_the_final_rename_is_held_back_while_another_thread_runs(tmp_path, monkeypatch):
    """The kernel hands a signal sent to the process to any thread that does not block it (under
    pytest -n: the worker's I/O thread), and Python runs the handler in the main thread: blocking it
    in the committing thread alone let Ctrl-C land before the rename ("no file was written")."""
    done = threading.Event()
    other = threading.Thread(target=done.wait, daemon=True)
    other.start()
    try:
        test_ctrl_c_during_the_final_rename_says_truthfully_that_the_file_was_written(tmp_path, monkeypatch)
    finally:
        done.set()
        other.join()


def test_sigterm_during_the_final_rename_is_held_back_too(tmp_path, monkeypatch):
    real_replace = os.replace

    def replace_then_sigterm(src, dst):
        os.kill(os.getpid(), signal.SIGTERM)
        real_replace(src, dst)
    monkeypatch.setattr(atomic.os, "replace", replace_then_sigterm)
    out = tmp_path / "x.safetensors"
    result = runner.invoke(app, PRUNE + ["-o", str(out)])
    assert result.exit_code == 143, (result.stderr, result.exception)
    assert "written completely" in result.stderr
    load_checkpoint(out)


def test_ctrl_c_before_the_rename_leaves_nothing_and_says_so(tmp_path, monkeypatch):
    def interrupted(fd, data):
        raise KeyboardInterrupt
    monkeypatch.setattr(atomic, "write_all", interrupted)
    result = runner.invoke(app, PRUNE + ["-o", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 130
    assert "no file was written" in result.stderr and os.listdir(tmp_path) == []


def test_a_failed_final_save_keeps_the_trained_result_elsewhere(golden, tmp_path, monkeypatch):
    shutil.copy(golden / "init.safetensors", tmp_path / "init.safetensors")
    (tmp_path / "full").mkdir()
    full_at_final_save(tmp_path, monkeypatch)
    result = runner.invoke(app, ["train", str(tmp_path / "init.safetensors"), "--epochs", "1", "--device", "cpu",
                                 "-q", "-o", str(tmp_path / "full" / "t.safetensors")])
    assert result.exit_code == 2
    rescued = Path(result.stderr.split("saved to ")[1].split(" instead")[0])
    try:
        assert load_checkpoint(rescued).stage == "trained"
    finally:
        shutil.rmtree(rescued.parent)


# --------------------------------------------------------------------------------------------
# Signals, pipes and other processes
# --------------------------------------------------------------------------------------------

FORCE = [sys.executable, "-m", "force_cli"]


def test_sigterm_between_the_last_epoch_and_the_final_save_still_saves_the_result(golden, tmp_path):
    out = tmp_path / "t.safetensors"

    def on_epoch(record):
        if record["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as caught:
        train_checkpoint(golden / "init.safetensors", out, {"epochs": 2, "batch_size": 256}, device="cpu",
                         callbacks=TrainCallbacks(on_epoch=on_epoch))
    assert caught.value.exit_code == 143 and "written completely" in str(caught.value)
    assert load_checkpoint(out).stage == "trained"
    assert sorted(os.listdir(tmp_path)) == ["t.safetensors"]


def test_ctrl_c_while_starting_is_one_line_exit_130(monkeypatch, capsys):
    import builtins

    import force_cli.__main__ as entry
    real_import = builtins.__import__

    def slow_import(name, *args, **kwargs):
        if name == "force_cli.cli":
            raise KeyboardInterrupt
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", slow_import)
    with pytest.raises(SystemExit) as caught:
        entry.main()
    assert caught.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_closed_stdout_pipe_ends_quietly_like_unix_tools(golden, tmp_path):
    proc = subprocess.Popen(FORCE + ["inspect", str(golden / "init.safetensors")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader went away before anything was written (`| head -0`)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGPIPE, err
    assert err == b""


def test_a_second_process_writing_the_same_output_is_refused(tmp_path):
    out = tmp_path / "race.safetensors"
    with hold((out, "output")):  # this process is the first writer
        done = subprocess.run(FORCE + PRUNE + ["-o", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {os.getpid()}" in lines[0] and "being written" in lines[0]
    assert os.listdir(tmp_path) == []


def test_sigterm_during_training_saves_progress_and_exits_143(golden, tmp_path):
    init = tmp_path / "init.safetensors"
    shutil.copy(golden / "init.safetensors", init)
    proc = subprocess.Popen(FORCE + ["train", str(init), "--epochs", "100000", "--device", "cpu", "--save-every", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "init-trained.partial.safetensors"
    # wait for the first epoch line on stderr: training is under way
    assert proc.stderr.readline().startswith("epoch 1")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "force train --resume" in err and not err.strip().splitlines()[-1].startswith("error")
    assert out == "" and load_checkpoint(partial).stage == "partial"


def test_a_cell_recorded_twice_counts_once_in_the_report(tmp_path):
    good = {"cell": "force-s0.9-seed0", "method": "force", "sparsity": 0.9, "seed": 0, "test_acc": 0.8}
    again = good | {"test_acc": 0.6}
    (tmp_path / "results.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(again) + "\n")
    result = runner.invoke(app, ["sweep", "--report", str(tmp_path)])
    assert result.exit_code in (0, 2), result.stderr  # 2 only if matplotlib is missing
    assert "| force | 60.00 (n=1) |" in (tmp_path / "results.md").read_text()


def test_ctrl_c_while_a_sweep_prunes_keeps_the_finished_cells_and_says_so(golden, tmp_path, monkeypatch):
    import force_cli.sweep.cell as sweep_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(sweep_module, "prune_to_checkpoint", interrupted)
    out = tmp_path / "s"
    result = runner.invoke(app, ["sweep", str(golden / "sweep-ok.yaml"), "--out", str(out), "-q"])
    assert result.exit_code == 130
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "run the same command again" in lines[0] and not lines[0].startswith("error")
    assert not (out / "results.jsonl").exists() and not list(tmp_path.glob(".*.lock"))


def test_eval_json_is_strict_when_the_loss_is_nan(golden, tmp_path):
    result = runner.invoke(app, ["eval", str(golden / "nanweights.safetensors"), "--json", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.stderr

    def refuse(constant):
        raise AssertionError(f"bare {constant} in --json output")
    report = json.loads(result.stdout, parse_constant=refuse)
    assert report["loss"] is None


def test_sigterm_outside_training_exits_143_with_one_line(tmp_path, monkeypatch):
    import force_cli.pruning.job as job

    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM should have stopped the command")
    monkeypatch.setattr(job, "prune", terminated)
    result = runner.invoke(app, PRUNE + ["-o", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 143, (result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "SIGTERM" in lines[0] and not lines[0].startswith("error")
    assert os.listdir(tmp_path) == []


def test_an_unexpected_error_is_still_one_line(tmp_path, monkeypatch):
    import force_cli.pruning.job as job

    def bug(*args, **kwargs):
        raise ValueError("something force-cli did not foresee\nsecond line")
    monkeypatch.setattr(job, "prune", bug)
    monkeypatch.delenv("FORCE_DEBUG", raising=False)
    result = runner.invoke(app, PRUNE + ["-o", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unexpected ValueError" in lines[0] and "bug" in lines[0], lines
    assert os.listdir(tmp_path) == []
