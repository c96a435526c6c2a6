"""Bad input and faults, second pass (issue 21): one case per root cause the second red team found.

Every case checks the exit code, that stderr is one line (or none) without a traceback, that every
file that was there before is unchanged, and that no lock or temporary file is left behind. The
resource cases (compact reader, reachability pass, YAML aliases) bound the memory as a count: the
peak resident size of the `force` process (``ru_maxrss`` from ``wait4``), never a wall-clock time.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from force_cli import atomic
from force_cli.cli import app

runner = CliRunner()
FORCE = [sys.executable, "-m", "force_cli"]
REPO = Path(__file__).resolve().parents[1]
#: What a subprocess may use on top of the interpreter with torch loaded (about 0.5 GB for the CUDA build).
MEMORY_BOUND_KB = 1_500_000
#: A cap on the address space of the subprocesses that could run away (protects the shared machine
#: when a case is run against code without the fix; torch alone reserves about 3.3 GB of addresses).
ADDRESS_SPACE_CAP = 8 << 30


# --------------------------------------------------------------------------------------------
# Helpers: snapshots, leftovers, one-line errors, subprocesses with their peak memory
# --------------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) and a hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def leftovers(folder: Path) -> list[str]:
    """Lock and temporary files under ``folder``: a finished command leaves none."""
    return [str(p) for p in folder.rglob("*") if p.name.endswith((".lock", atomic.TEMP_SUFFIX))]


def unchanged(before: dict[str, str], after: dict[str, str]) -> bool:
    """Every file of ``before`` is still there with the same bytes (new files are allowed)."""
    return all(after.get(name) == digest for name, digest in before.items())


def assert_one_line_error(code: int, stderr: str, expected_code: int, fragment: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == expected_code, (code, stderr)
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines


def invoke(args: list[str]):
    """`force ARGS` in this process; returns the CliRunner result."""
    return runner.invoke(app, [str(a) for a in args])


def run_force(args: list[str], cwd: Path, env: dict | None = None, stdin=subprocess.DEVNULL,
              preexec=None, cap_memory: bool = False, timeout: float = 600) -> tuple[int, str, str, int]:
    """`python -m force_cli ARGS` in a subprocess: (exit code, stdout, stderr, peak RSS in KB).

    The peak resident size comes from ``wait4`` for this child alone (not the maximum over every
    child this test process ever had, as ``RUSAGE_CHILDREN`` would give)."""
    out_path, err_path = cwd / ".stdout.txt", cwd / ".stderr.txt"

    def prepare():
        if cap_memory:
            resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP))
        if preexec is not None:
            preexec()

    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(FORCE + [str(a) for a in args], cwd=cwd, stdin=stdin, stdout=out, stderr=err,
                                env=full_env, preexec_fn=prepare)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    out_path.unlink()
    err_path.unlink()
    code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
    return code, stdout, stderr, usage.ru_maxrss


# --------------------------------------------------------------------------------------------
# 1. A sweep cell's key identifies its sparsity exactly; an old results folder still resumes
# --------------------------------------------------------------------------------------------

CLOSE_SPARSITIES = """model: lenet300
dataset: digits
train:
  epochs: 1
sweep:
  methods: [magnitude]
  sparsities: [0.9, 0.9000001]
  seeds: [0]
"""


def test_1_two_sparsities_that_print_alike_get_their_own_cells(tmp_path):
    from force_cli.checkpoint import read_metadata

    recipe = tmp_path / "r.yaml"
    recipe.write_text(CLOSE_SPARSITIES)
    before = snapshot(tmp_path)
    result = invoke(["sweep", recipe, "--out", tmp_path / "out", "-q", "--jobs", "2"])
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["sparsity"] for r in records) == [0.9, 0.9000001]
    assert len({r["cell"] for r in records}) == 2
    for r in records:  # each cell pruned its own checkpoint, at its own sparsity
        assert read_metadata(tmp_path / "out" / r["pruned"])["target_sparsity"] == r["sparsity"]
    assert len(list((tmp_path / "out" / "cells").iterdir())) == 2
    assert unchanged(before, snapshot(tmp_path)) and leftovers(tmp_path) == []


def test_1_an_old_results_folder_resumes_and_a_collided_record_is_run_again(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(CLOSE_SPARSITIES)
    out = tmp_path / "out"
    out.mkdir()
    old = {"cell": "magnitude-s0.9-seed0", "method": "magnitude", "seed": 0, "test_acc": 0.5}
    # an older force ran both sparsities under the one key "s0.9": the second record is not 0.9000001's
    (out / "results.jsonl").write_text(json.dumps(old | {"sparsity": 0.9}) + "\n"
                                       + json.dumps(old | {"sparsity": 0.9000001}) + "\n")
    before = snapshot(tmp_path)
    result = invoke(["sweep", recipe, "--out", out, "--dry-run"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == ["done\tmagnitude-s0.9-seed0", "todo\tmagnitude-s0.9000001-seed0"]
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------
# 2. --log-file appends only to a force training log, and ends a partial last line safely
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    """A small pruned checkpoint (LeNet-300-100 on digits, 90 % random), made once."""
    from force_cli.config import PruneConfig
    from force_cli.pruning.job import prune_to_checkpoint

    path = tmp_path_factory.mktemp("pruned") / "lenet.safetensors"
    prune_to_checkpoint(PruneConfig(model="lenet300", dataset="digits", sparsity=0.9, method="random"), path)
    return path


@pytest.fixture
def work(pruned, tmp_path, monkeypatch) -> Path:
    """A folder holding a copy of the pruned checkpoint, as the current folder."""
    (tmp_path / "lenet.safetensors").write_bytes(pruned.read_bytes())
    monkeypatch.chdir(tmp_path)
    return tmp_path


TRAIN_ONE = ["train", "lenet.safetensors", "--epochs", "1", "--device", "cpu", "-q", "-o", "t.safetensors"]
RECORD = {"epoch": 1, "lr": 0.1, "train_loss": 2.0, "train_acc": 0.5, "val_loss": None, "val_acc": None,
          "test_loss": 2.0, "test_acc": 0.5, "seconds": 0.1}


@pytest.mark.parametrize("name, content", [
    ("sweep.json", b'{"title": "x"}'),  # the case: first byte '{', no newline
    ("results.jsonl", b'{"cell": "force-s0.9-seed0", "method": "force", "sparsity": 0.9, "test_acc": 0.8}\n'),
    ("config.json", b'{\n  "lr": 0.1\n}\n'),
    ("mixed.jsonl", json.dumps(RECORD).encode() + b'\n{"note": "mine"}\n'),
])
def test_2_a_file_that_is_not_a_training_log_is_refused_and_kept(work, name, content):
    (work / name).write_bytes(content)
    before = snapshot(work)
    result = invoke(TRAIN_ONE + ["--log-file", name])
    assert_one_line_error(result.exit_code, result.stderr, 2, "is not a JSON-lines log of `force train`")
    assert snapshot(work) == before and leftovers(work) == []


@pytest.mark.parametrize("tail", [b"", b"\n"], ids=["last-record-without-newline", "complete"])
def test_2_a_training_log_gets_whole_records_appended(work, tail):
    log = work / "train.jsonl"
    first = json.dumps(RECORD).encode()
    log.write_bytes(first + tail)
    result = invoke(TRAIN_ONE + ["--log-file", log])
    assert result.exit_code == 0, result.stderr
    lines = log.read_bytes().split(b"\n")
    assert lines[0] == first and lines[-1] == b"" and len(lines) == 3
    assert json.loads(lines[1])["epoch"] == 1 and leftovers(work) == []


def test_2_a_record_cut_short_by_a_killed_run_is_dropped_not_glued_to(work):
    log = work / "train.jsonl"
    first = json.dumps(RECORD).encode() + b"\n"
    log.write_bytes(first + json.dumps(RECORD | {"epoch": 2}).encode()[:30])
    result = invoke(TRAIN_ONE + ["--log-file", log])
    assert result.exit_code == 0, result.stderr
    data = log.read_bytes()
    assert data.startswith(first) and data.endswith(b"\n")
    assert [json.loads(line)["epoch"] for line in data.splitlines()] == [1, 1]


def test_2_the_fields_a_log_record_must_hold_are_fields_the_loop_writes():
    from force_cli.training import epoch_log, loop

    assert set(epoch_log.RECORD_FIELDS) <= set(loop.EPOCH_FIELDS) and loop.EPOCH_FIELDS[0] == "epoch"


# --------------------------------------------------------------------------------------------
# 3. Sweep workers die with their parent; a lock of a dead process never blocks a re-run
# --------------------------------------------------------------------------------------------

SLOW_MODEL = '''import os, time
from torch import nn


class Slow(nn.Module):
    """A small MLP for 8x8 digits whose forward sleeps $SLOW seconds (on real tensors)."""

    def __init__(self, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes))

    def forward(self, x):
        if x.device.type != "meta":
            time.sleep(float(os.environ.get("SLOW", "0")))
        return self.body(x)


def net(num_classes):
    return Slow(num_classes)
'''
SLOW_RECIPE = """model: slowmodel:net
dataset: digits
train:
  epochs: 1
sweep:
  methods: [magnitude]
  sparsities: [0.5, 0.9]
  seeds: [0]
"""


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that never comes, in a container, is not)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_until(condition, limit: float) -> bool:
    """Poll ``condition`` until it holds or ``limit`` seconds have passed (a wait, not a speed check)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_3_workers_of_a_killed_sweep_die_and_the_same_command_resumes(tmp_path):
    (tmp_path / "slowmodel.py").write_text(SLOW_MODEL)
    (tmp_path / "slow.yaml").write_text(SLOW_RECIPE)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    command = FORCE + ["sweep", "slow.yaml", "--jobs", "2", "-q"]
    parent = subprocess.Popen(command, cwd=tmp_path, env=env | {"SLOW": "2"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    cells = tmp_path / "runs" / "slow" / "cells"
    try:  # both workers have pruned their cell and are training it
        assert wait_until(lambda: len(list(cells.glob("*/pruned.safetensors"))) == 2, 300)
        workers = children_of(parent.pid)
        assert len(workers) >= 2
    finally:
        parent.kill()
        parent.wait()
    try:
        assert wait_until(lambda: not any(alive(pid) for pid in workers), 60), "workers outlived their parent"
    finally:  # without the fix they would train on: end them here
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    records = [json.loads(line) for line in (tmp_path / "runs" / "slow" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["sparsity"] for r in records) == [0.5, 0.9]
    assert leftovers(tmp_path) == []


LOCK_THEN_DIE = """
import os, signal, sys, time
from pathlib import Path
from force_cli.locking import hold

with hold((Path(sys.argv[1]), "output")):
    child = os.fork()
    if child == 0:  # a forked helper (a DataLoader worker, say) that outlives its parent
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)  # not the test's pipe, which it would keep open
        os.dup2(null, 2)
        time.sleep(60)
        os._exit(0)
    print(child, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # killed outright while holding the lock
"""


def test_3_a_lock_of_a_killed_process_never_blocks_a_re_run_even_with_a_forked_child_alive(tmp_path):
    from force_cli.locking import hold

    target = tmp_path / "x.safetensors"
    done = subprocess.run([sys.executable, "-c", LOCK_THEN_DIE, str(target)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    child = int(done.stdout.split()[0])
    try:
        assert done.returncode == -signal.SIGKILL and alive(child)
        with hold((target, "output")):  # the lock file is still there; its holder is dead
            pass
    finally:
        os.kill(child, signal.SIGKILL)
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------
# 4. The compact reader compares declared shapes with the model before it allocates anything
# --------------------------------------------------------------------------------------------

HUGE = 300_000_000  # elements declared by a few KB of gap codes: 2.7 GB as float64 plus a bool mask


def compact_declaring(pruned: Path, dest: Path, name: str, shape: list[int]) -> None:
    """A compact checkpoint whose weight ``name`` is declared with ``shape`` (float64, one kept
    value, the rest covered by uint16 gap codes): a few KB standing for ``prod(shape)`` elements."""
    import math

    import torch
    from safetensors.torch import save_file

    from force_cli.checkpoint import compact
    from force_cli.checkpoint import load_checkpoint

    ckpt = load_checkpoint(pruned)
    tensors = dict(ckpt.state_dict) | {f"mask:{k}": m for k, m in ckpt.masks.items()}
    raw_meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in ckpt.metadata.items()}
    tensors, header = compact.encode(tensors, raw_meta)
    layout = json.loads(header["compact"])
    n = math.prod(shape)
    layout[name] = {"shape": shape, "kept": 1, "mask": "gaps"}
    tensors[f"values:{name}"] = torch.ones(1, dtype=torch.float64)
    tensors.pop(f"bits:{name}", None)
    tensors[f"gaps:{name}"] = torch.tensor([0] + [65535] * ((n - 1) // 65535), dtype=torch.int64).to(torch.uint16)
    save_file(tensors, str(dest), metadata=header | {"compact": json.dumps(layout)})


def test_4_a_compact_file_declaring_a_huge_weight_is_refused_before_allocating_it(pruned, tmp_path):
    crafted = tmp_path / "crafted.safetensors"
    compact_declaring(pruned, crafted, "fc1.weight", [HUGE])
    assert crafted.stat().st_size < 100_000
    before = snapshot(tmp_path)
    code, out, err, peak_kb = run_force(["inspect", crafted], tmp_path, cap_memory=True)
    assert_one_line_error(code, err, 2, f"'fc1.weight' has shape ({HUGE},) but model 'lenet300' needs (300, 64)")
    assert peak_kb < MEMORY_BOUND_KB, f"peak {peak_kb} KB"
    assert out == "" and snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_4_every_reader_checks_declared_shapes_first(pruned, tmp_path, monkeypatch):
    """train, eval and ablate read through the same check (a zero-size allocation budget proves it: nothing
    of the declared size is allocated before the refusal)."""
    from force_cli.checkpoint import compact

    crafted = tmp_path / "crafted.safetensors"
    compact_declaring(pruned, crafted, "fc1.weight", [HUGE])
    monkeypatch.setattr(compact, "_memory_bytes", lambda: 0)  # any allocation check would refuse first
    for args in (["eval", crafted], ["train", crafted, "--epochs", "1"],
                 ["ablate", crafted, "--shuffle-within-layers", "-o", tmp_path / "shuffled.safetensors"]):
        result = invoke(args)
        assert_one_line_error(result.exit_code, result.stderr, 2, "'fc1.weight' has shape")


# --------------------------------------------------------------------------------------------
# 5. inspect's reachability pass is bounded, whatever input size the metadata claims
# --------------------------------------------------------------------------------------------


def resnet18_claiming_512_px(path: Path):
    """A CIFAR ResNet-18 checkpoint (made for 32 px) whose metadata says 512 px images of an imagefolder."""
    import torch

    from force_cli.checkpoint import save_checkpoint
    from force_cli.models import build_model
    from force_cli.pruning.masks import prunable_weights

    torch.manual_seed(0)
    model = build_model("resnet18", init=None, num_classes=10, in_channels=3, image_size=32)
    masks = {k: torch.rand(w.shape) < 0.1 for k, w in prunable_weights(model).items()}
    args = {"num_classes": 10, "in_channels": 3, "image_size": 512}
    save_checkpoint(path, model.state_dict(), masks, {
        "stage": "init", "model": "resnet18", "model_args": args, "dataset": "imagefolder"}, compact=True)
    return model


def test_5_the_pass_at_the_claimed_size_is_counted_on_the_meta_device_and_exceeds_the_budget(tmp_path):
    from force_cli.pruning.connectivity import REACHABILITY_BUDGET, reachability_size

    model = resnet18_claiming_512_px(tmp_path / "r18.safetensors")
    # by hand: 64 channels at 512x512 is 16.8 M elements per layer; the budget holds about 8 such layers
    assert reachability_size(model, (3, 512, 512)) > REACHABILITY_BUDGET > reachability_size(model, (3, 32, 32))
    assert reachability_size(model, (3, 32, 32)) > 64 * 32 * 32 * 17  # the 17 convolutions at full size alone


def test_5_a_checkpoint_claiming_512_px_inputs_is_inspected_in_bounded_memory(tmp_path):
    from force_cli.checkpoint import load_checkpoint

    crafted = tmp_path / "r18.safetensors"
    resnet18_claiming_512_px(crafted)
    before = snapshot(tmp_path)
    code, out, err, peak_kb = run_force(["inspect", crafted, "--json"], tmp_path, cap_memory=True)
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: effective density not computed") and "3x512x512" in lines[0]
    report = json.loads(out)
    assert report["totals"]["effective_density"] is None and report["disconnected"] is None
    kept = sum(int(m.sum()) for m in load_checkpoint(crafted).masks.values())
    assert report["totals"]["kept"] == kept  # the density is still reported, exactly
    assert peak_kb < MEMORY_BOUND_KB, f"peak {peak_kb} KB"
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_5_the_table_shows_the_columns_it_could_not_compute_as_dashes(tmp_path, monkeypatch):
    from force_cli.pruning import connectivity

    monkeypatch.setattr(connectivity, "REACHABILITY_BUDGET", 10)
    from force_cli.config import PruneConfig
    from force_cli.pruning.job import prune_to_checkpoint

    path = tmp_path / "l.safetensors"
    prune_to_checkpoint(PruneConfig(model="lenet300", dataset="digits", sparsity=0.9, method="random"), path)
    result = invoke(["inspect", path])
    assert result.exit_code == 0, result.stderr
    assert "effective density not computed" in result.stderr and "–" in result.stdout


# --------------------------------------------------------------------------------------------
# 6. A recipe's YAML aliases cannot expand without bound, and no message repr's a huge value
# --------------------------------------------------------------------------------------------


def laughs(levels: int = 9) -> str:
    """A sweep title of ``levels`` nested lists of 9 aliases each: 9**levels strings from ~600 bytes."""
    names = "abcdefghijklmnop"
    parts = ["&a [" + ", ".join(["lol"] * 9) + "]"]
    for i in range(1, levels):
        parts.append(f"&{names[i]} [" + ", ".join([f"*{names[i - 1]}"] * 9) + "]")
    return f"model: lenet300\ndataset: digits\nsweep:\n  sparsities: [0.9]\n  title: [{', '.join(parts)}]\n"


def test_6_a_billion_laughs_recipe_is_refused_in_bounded_memory(tmp_path):
    recipe = tmp_path / "laughs.yaml"
    recipe.write_text(laughs())
    assert recipe.stat().st_size < 700
    before = snapshot(tmp_path)
    code, out, err, peak_kb = run_force(["sweep", recipe, "--out", tmp_path / "out"], tmp_path, cap_memory=True)
    assert_one_line_error(code, err, 2, "expands, through its YAML aliases")
    assert peak_kb < MEMORY_BOUND_KB, f"peak {peak_kb} KB"
    assert out == "" and snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_6_the_expansion_is_counted_node_by_node_once():
    import yaml

    from force_cli.config import expanded_nodes

    # by hand: 9 scalars + their list = 10 nodes; each next level is 1 + 9 x the previous one
    assert expanded_nodes(yaml.compose("[" + ", ".join(["x"] * 9) + "]")) == 10
    two = yaml.compose("[&a [" + ", ".join(["x"] * 9) + "], [" + ", ".join(["*a"] * 9) + "]]")
    assert expanded_nodes(two) == 1 + 10 + (1 + 9 * 10)
    assert expanded_nodes(yaml.compose(laughs()), limit=1000) == 1001  # saturates just past the limit
    assert expanded_nodes(yaml.compose("&a [*a]")) > 10_000  # a list that contains itself


def test_6_a_shared_value_within_the_bound_is_still_fine(tmp_path):
    from force_cli.config import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: lenet300\ndataset: digits\nprune:\n  batch_size: &b 64\ntrain:\n  batch_size: *b\n")
    assert load_recipe(recipe).sections["train"]["batch_size"] == 64


def test_6_a_recipe_is_read_by_one_yaml_loader(tmp_path, monkeypatch):
    """The checked node graph is the one built into values: one YAML loader reads the text (there
    were two, compose then safe_load, each scanning every token)."""
    import yaml

    from force_cli.config import load_recipe

    loaders = []
    init = yaml.SafeLoader.__init__
    monkeypatch.setattr(yaml.SafeLoader, "__init__", lambda self, stream: loaders.append(stream) or init(self, stream))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: lenet300\ndataset: digits\nprune:\n  batch_size: &b 64\ntrain:\n  batch_size: *b\n")
    assert load_recipe(recipe).sections["prune"]["batch_size"] == 64
    assert len(loaders) == 1  # one loader read it


def test_6_a_wrong_value_is_named_briefly_whatever_its_size(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: lenet300\ndataset: digits\nsweep:\n  sparsities: [0.9]\n  title: ["
                      + ", ".join(["lol"] * 5000) + "]\n")
    result = invoke(["sweep", recipe, "--out", tmp_path / "out"])
    assert_one_line_error(result.exit_code, result.stderr, 2, "'title' must be str, got ['lol', 'lol'")
    assert len(result.stderr) < 400 and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# 7. A thread count beyond any machine is refused with one line, from the flag or the environment
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env, args, fragment", [
    ({"FORCE_THREADS": "3000000000"}, [], "$FORCE_THREADS must be at most"),
    ({"FORCE_THREADS": "", "OMP_NUM_THREADS": str(2**31)}, [], "$OMP_NUM_THREADS must be at most"),
    ({}, ["--threads", str(2**31)], "--threads must be at most"),
    ({}, ["--threads", str(2**63)], "--threads must be at most"),
])
def test_7_a_huge_thread_count_is_one_line_exit_2(work, env, args, fragment):
    before = snapshot(work)
    result = runner.invoke(app, ["inspect", "lenet.safetensors", *args], env=env)
    assert_one_line_error(result.exit_code, result.stderr, 2, fragment)
    assert result.stdout == "" and snapshot(work) == before and leftovers(work) == []


# --------------------------------------------------------------------------------------------
# 8. export validates its input exactly as the other readers do
# --------------------------------------------------------------------------------------------


def with_tensors(src: Path, dest: Path, edit) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    edit(tensors)
    save_file(tensors, str(dest), metadata=meta)
    return dest


@pytest.mark.parametrize("to", ["dense", "compact", "state-dict", "torch-prune"])
@pytest.mark.parametrize("edit, fragment", [
    (lambda t: t.update({"fc9.weight": t["fc1.bias"][:2].clone()}), "holds 'fc9.weight'"),  # inspect refuses it
    (lambda t: t.update({"fc1:x": t["fc1.bias"].clone()}), "holds 'fc1:x'"),  # crashed save_checkpoint before
    (lambda t: t.update({"mask:fc1.bias": t["fc1.bias"] > 0}), "mask 'fc1.bias' matches no prunable weight"),
], ids=["extra-tensor", "corrupt-key-name", "mask-on-a-bias"])
def test_8_export_refuses_what_the_other_readers_refuse(work, to, edit, fragment):
    with_tensors(work / "lenet.safetensors", work / "bad.safetensors", edit)
    inspected = invoke(["inspect", work / "bad.safetensors"])
    assert_one_line_error(inspected.exit_code, inspected.stderr, 2, fragment)
    before = snapshot(work)
    result = invoke(["export", work / "bad.safetensors", "--to", to, "-o", work / "out.safetensors"])
    assert_one_line_error(result.exit_code, result.stderr, 2, fragment)
    assert result.stdout == "" and snapshot(work) == before and leftovers(work) == []


def test_8_export_rebuilds_an_import_path_model_only_when_trusted(tmp_path, monkeypatch):
    from force_cli.config import PruneConfig
    from force_cli.pruning.job import prune_to_checkpoint

    monkeypatch.chdir(tmp_path)
    src = tmp_path / "mlp.safetensors"
    prune_to_checkpoint(PruneConfig(model="tests.custom_models:tiny_mlp", dataset="digits", sparsity=0.9,
                                    method="random"), src)
    before = snapshot(tmp_path)
    result = invoke(["export", src, "--to", "state-dict", "-o", "w.safetensors"])
    assert_one_line_error(result.exit_code, result.stderr, 2, "--trust-model-code")
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []
    result = invoke(["export", src, "--to", "state-dict", "-o", "w.safetensors", "--trust-model-code"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "w.safetensors" and leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------
# 9. An integer of more than 4300 digits, in a recipe, a results file or a checkpoint's metadata
# --------------------------------------------------------------------------------------------

LONG = "1" + "0" * 5000


def test_9_a_recipe_integer_of_5001_digits_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(f"prune:\n  steps: {LONG}\n")
    before = snapshot(tmp_path)
    result = invoke(["prune", "-m", "lenet300", "-d", "digits", "-s", "0.9", "--recipe", "r.yaml"])
    assert_one_line_error(result.exit_code, result.stderr, 2, "an integer of 5001 characters at line 2")
    assert len(result.stderr) < 400 and snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_9_a_recipe_date_that_does_not_exist_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("model: lenet300\nprune:\n  sparsity: 2024-13-45\n")
    result = invoke(["prune", "--recipe", "r.yaml"])
    assert_one_line_error(result.exit_code, result.stderr, 2, "holds a value that cannot be read")


@pytest.mark.parametrize("command", [["sweep", "--report", "{out}"], ["sweep", "{recipe}", "--out", "{out}", "--dry-run"]])
def test_9_a_results_line_with_an_integer_of_5001_digits_is_one_line(tmp_path, command):
    out = tmp_path / "out"
    out.mkdir()
    good = {"cell": "random-s0.9-seed0", "method": "random", "sparsity": 0.9, "seed": 0, "test_acc": 0.5}
    (out / "results.jsonl").write_text(json.dumps(good).replace('"seed": 0', f'"seed": {LONG}') + "\n"
                                       + json.dumps(good) + "\n")
    (tmp_path / "r.yaml").write_text("model: lenet300\ndataset: digits\nsweep:\n  methods: [random]\n  sparsities: [0.9]\n")
    before = snapshot(tmp_path)
    args = [a.replace("{out}", str(out)).replace("{recipe}", str(tmp_path / "r.yaml")) for a in command]
    result = invoke(args)
    assert_one_line_error(result.exit_code, result.stderr, 2, "line 1 is not valid JSON")
    assert snapshot(tmp_path) == before and leftovers(tmp_path) == []


def test_9_checkpoint_metadata_with_an_integer_of_5001_digits_is_named(work):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open("lenet.safetensors", framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    save_file(tensors, "long.safetensors", metadata=meta | {"seed": LONG})
    before = snapshot(work)
    result = invoke(["inspect", "long.safetensors"])
    assert_one_line_error(result.exit_code, result.stderr, 2, "metadata field 'seed' is not valid JSON")
    assert snapshot(work) == before and leftovers(work) == []


# --------------------------------------------------------------------------------------------
# 10. Started with stdout closed, a command that succeeds exits 0 and its file is intact
# --------------------------------------------------------------------------------------------


def test_10_prune_with_stdout_closed_writes_its_checkpoint_and_exits_0(tmp_path):
    from force_cli.checkpoint import load_checkpoint

    code, out, err, _ = run_force(["prune", "-m", "lenet300", "-d", "digits", "-s", "0.9", "--method", "random",
                                   "-o", "x.safetensors"], tmp_path, preexec=lambda: os.close(1))
    assert code == 0, err
    assert "Traceback" not in err and "error" not in err
    assert out == ""  # the output file the helper gave is untouched: fd 1 was closed before the command
    assert load_checkpoint(tmp_path / "x.safetensors").metadata["method"] == "random"
    assert leftovers(tmp_path) == []


def test_10_every_closed_standard_stream_is_reopened_on_dev_null(tmp_path):
    script = ("import os, sys\nfrom force_cli import std_streams\n"
              "opened = std_streams.reopen_closed()\n"
              "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\n"  # a new file no longer takes fd 0, 1 or 2
              "print(opened, fd, file=sys.stderr if 'stderr' not in opened else open(sys.argv[2], 'w'))\n"
              "print('to stdout')\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "f"), str(tmp_path / "report")],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          preexec_fn=lambda: (os.close(0), os.close(1), os.close(2)), timeout=60)
    assert done.returncode == 0
    opened, fd = (tmp_path / "report").read_text().rsplit(" ", 1)
    assert opened == "['stdin', 'stdout', 'stderr']" and int(fd) > 2
    assert (tmp_path / "f").read_bytes() == b""


# --------------------------------------------------------------------------------------------
# 11. Text the output encoding cannot represent is escaped, not a UnicodeEncodeError
# --------------------------------------------------------------------------------------------


def test_11_inspect_with_an_ascii_stdout_escapes_what_ascii_lacks(work):
    code, out, err, _ = run_force(["inspect", "lenet.safetensors"], work, env={"PYTHONIOENCODING": "ascii"})
    assert code == 0, err
    assert err == "" and "300\\xd764" in out  # 300x64, its sign escaped


def test_11_an_error_naming_a_non_ascii_file_is_still_one_line_in_ascii(work):
    code, out, err, _ = run_force(["inspect", "caf\u00e9.safetensors"], work, env={"PYTHONIOENCODING": "ascii"})
    assert_one_line_error(code, err, 2, "caf\\xe9.safetensors' does not exist")


# --------------------------------------------------------------------------------------------
# 12. A learning rate or weight decay beyond float32's range is refused before training
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag, value", [("--lr", "1e39"), ("--weight-decay", "1e39"), ("--lr", "inf")])
def test_12_a_setting_beyond_float32_is_refused_up_front(work, flag, value):
    before = snapshot(work)
    result = invoke(TRAIN_ONE + [flag, value])
    assert_one_line_error(result.exit_code, result.stderr, 2, f"{flag} must be")
    assert "float32" in result.stderr and snapshot(work) == before and leftovers(work) == []


def test_12_float32s_largest_value_itself_is_accepted():
    from force_cli.config import TrainSettings
    from force_cli.training.settings import complete_settings

    largest = 3.4028234663852886e38  # (2 - 2**-23) * 2**127, by hand
    assert complete_settings(TrainSettings(lr=largest, weight_decay=largest), "digits").lr == largest


# --------------------------------------------------------------------------------------------
# 13. A --model module or factory that calls sys.exit() is one line, exit 2, not a silent exit
# --------------------------------------------------------------------------------------------

EXITERS = {
    "on_import": "import sys\nsys.exit(3)\n",
    "in_factory": "import sys\n\ndef net(num_classes):\n    sys.exit(3)\n",
    "in_forward": ("import sys\nfrom torch import nn\n\nclass Net(nn.Module):\n    def __init__(self):\n"
                   "        super().__init__()\n        self.fc = nn.Linear(64, 10)\n\n"
                   "    def forward(self, x):\n        sys.exit(3)\n\ndef net():\n    return Net()\n"),
}


@pytest.mark.parametrize("where, fragment", [("on_import", "cannot import 'exiter_on_import'"),
                                             ("in_factory", "model factory 'exiter_in_factory:net' failed"),
                                             ("in_forward", "cannot take 1x8x8 images")])
def test_13_model_code_that_calls_sys_exit_is_one_line_exit_2(tmp_path, monkeypatch, where, fragment):
    (tmp_path / f"exiter_{where}.py").write_text(EXITERS[where])
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    result = invoke(["prune", "-m", f"exiter_{where}:net", "-d", "digits", "-s", "0.9", "-o", "x.safetensors"])
    assert_one_line_error(result.exit_code, result.stderr, 2, fragment)
    assert "sys.exit(3)" in result.stderr
    assert unchanged(before, snapshot(tmp_path)) and not (tmp_path / "x.safetensors").exists()
    assert leftovers(tmp_path) == []


def test_13_sys_exit_from_code_run_later_in_a_command_is_one_line_too(work, monkeypatch):
    import force_cli.training.job as job

    def exits(*args, **kwargs):
        raise SystemExit(3)
    monkeypatch.setattr(job, "_train", exits)  # as a model's forward calling sys.exit() mid-training would
    result = invoke(TRAIN_ONE)
    assert_one_line_error(result.exit_code, result.stderr, 2, "called sys.exit(3)")
    assert leftovers(work) == []


# --------------------------------------------------------------------------------------------
# 14. An output name of 245-255 bytes gets a lock and a temporary file that fit NAME_MAX
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [245, 255])
def test_14_a_valid_long_output_name_is_written(tmp_path, monkeypatch, length):
    from force_cli.checkpoint import load_checkpoint

    monkeypatch.chdir(tmp_path)
    name = "x" * (length - len(".safetensors")) + ".safetensors"
    assert len(name) == length
    result = invoke(["prune", "-m", "lenet300", "-d", "digits", "-s", "0.9", "--method", "random", "-q", "-o", name])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == name and load_checkpoint(tmp_path / name).metadata["method"] == "random"
    assert os.listdir(tmp_path) == [name]  # no lock or temporary file left


def test_14_sidecars_of_long_names_fit_differ_and_stay_the_same(tmp_path):
    from force_cli.locking import lock_path

    a, b = tmp_path / ("\u00e9" * 126 + "a"), tmp_path / ("\u00e9" * 126 + "b")  # 253 bytes each
    for path in (a, b):
        for side in (atomic.temp_path(path), lock_path(path)):
            assert len(os.fsencode(side.name)) <= 255 and side.parent == tmp_path
            side.name.encode("utf-8")  # whole characters only
    assert atomic.temp_path(a) != atomic.temp_path(b) and lock_path(a) != lock_path(b)
    assert atomic.temp_path(a) == atomic.temp_path(Path(str(a)))
    short = tmp_path / "x.safetensors"  # short names keep the names they always had
    assert atomic.temp_path(short).name == ".x.safetensors.force-tmp" and lock_path(short).name == ".x.safetensors.lock"


# --------------------------------------------------------------------------------------------
# 15. An output that is not a regular file is refused before anything is created beside it
# --------------------------------------------------------------------------------------------


def creations(monkeypatch) -> list[str]:
    """Every file force creates, recorded at the one place it creates files (atomic.create)."""
    made, real = [], atomic.create

    def create(path, flags):
        made.append(str(path))
        return real(path, flags)
    monkeypatch.setattr(atomic, "create", create)
    return made


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
@pytest.mark.parametrize("command", [
    ["export", "lenet.safetensors", "--to", "dense", "-o", "/dev/null", "--overwrite"],
    ["prune", "-m", "lenet300", "-d", "digits", "-s", "0.9", "-o", "/dev/null", "--overwrite"],
    ["train", "lenet.safetensors", "--epochs", "1", "-o", "/dev/null", "--overwrite"],
])
def test_15_dev_null_as_output_is_refused_and_nothing_is_created_in_dev(work, monkeypatch, command):
    made = creations(monkeypatch)
    before = snapshot(work)
    result = invoke(command)
    assert_one_line_error(result.exit_code, result.stderr, 2, "'/dev/null' exists and is not a regular file")
    assert made == [] and not os.path.exists("/dev/.null.lock")
    assert snapshot(work) == before and leftovers(work) == []


def test_15_a_fifo_as_output_is_refused_by_the_lock_itself(tmp_path):
    from force_cli.errors import ConfigError
    from force_cli.locking import hold

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        with hold((fifo, "output")):
            pass
    assert os.listdir(tmp_path) == ["pipe"]


# --------------------------------------------------------------------------------------------
# 16. A lock whose pid cannot be written (a full disk, ulimit -f 0) is not left behind
# --------------------------------------------------------------------------------------------


def test_16_a_file_size_limit_of_zero_leaves_no_lock_file(tmp_path):
    def no_file_may_grow():
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    # pipes, not files, for the output: a size limit of 0 applies to every file the command writes
    done = subprocess.run(FORCE + ["prune", "-m", "lenet300", "-d", "digits", "-s", "0.9", "--method", "random",
                                   "-o", "x.safetensors"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, preexec_fn=no_file_may_grow, timeout=300)
    assert os.listdir(tmp_path) == [], done.stderr
    assert_one_line_error(done.returncode, done.stderr, 2, "the file size limit is exceeded")


def test_16_a_failed_pid_write_takes_the_new_lock_file_away_again(tmp_path, monkeypatch):
    import errno

    from force_cli import locking
    from force_cli.errors import OutputError

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(locking.os, "pwrite", full)
    with pytest.raises(OutputError, match="no space left"):
        with locking.hold((tmp_path / "x.safetensors", "output")):
            pass
    assert os.listdir(tmp_path) == [] and locking._held_fds == set()


# --------------------------------------------------------------------------------------------
# 17. A sweep report whose stdout reader goes away still writes every file first
# --------------------------------------------------------------------------------------------


def test_17_report_into_a_closed_pipe_writes_the_plots_then_exits_141(tmp_path):
    pytest.importorskip("matplotlib")
    good = {"cell": "random-s0.9-seed0", "method": "random", "sparsity": 0.9, "seed": 0, "test_acc": 0.5}
    (tmp_path / "results.jsonl").write_text(json.dumps(good) + "\n")
    before = snapshot(tmp_path)
    proc = subprocess.Popen(FORCE + ["sweep", "--report", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    proc.stdout.close()  # `| true`: the reader is gone before anything was written
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGPIPE, err
    assert b"Traceback" not in err
    for name in ("results.md", "results.csv", "results.png", "results.svg"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert unchanged(before, snapshot(tmp_path)) and leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------
# 18. One-line messages stay one line at any $COLUMNS; OMP_NUM_THREADS=1,1; --sparsity -0
# --------------------------------------------------------------------------------------------


def test_18_progress_lines_do_not_wrap_at_a_narrow_terminal_width(work):
    code, _, err, _ = run_force(["prune", "-m", "lenet300", "-d", "digits", "-s", "0.9", "--method", "random",
                                 "-o", "x.safetensors"], work, env={"COLUMNS": "5"})
    assert code == 0, err
    assert err.splitlines() == ["kept 5,020 of 50,200 weights (sparsity 90.0000%)"]  # round(0.1 * 50,200)
    code, _, err, _ = run_force(["train", "x.safetensors", "--epochs", "2", "--device", "cpu", "-o", "t.safetensors"],
                                work, env={"COLUMNS": "5"})
    assert code == 0, err
    lines = err.splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch 1  lr ") and lines[2].startswith("trained 2 epochs: ")
    assert leftovers(work) == []


def test_18_an_openmp_nested_list_takes_its_first_level(work):
    from force_cli.threads import requested_threads

    assert requested_threads(None, {"OMP_NUM_THREADS": "1,1"}) == 1
    assert requested_threads(None, {"OMP_NUM_THREADS": " 3 , 2"}) == 3
    result = runner.invoke(app, ["inspect", "lenet.safetensors", "--json"], env={"FORCE_THREADS": "",
                                                                                  "OMP_NUM_THREADS": "1,1"})
    assert result.exit_code == 0, result.stderr


def test_18_sparsity_minus_zero_is_zero_in_the_name_and_the_metadata(work):
    from force_cli.checkpoint import read_metadata

    result = invoke(["prune", "-m", "lenet300", "-d", "digits", "-s", "-0", "--method", "random", "-q"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == "lenet300-digits-random-s0-seed0.safetensors"
    assert str(read_metadata(result.stdout.strip())["target_sparsity"]) == "0.0"
    assert leftovers(work) == []


def test_an_error_quotes_the_first_line_of_a_library_failure_or_its_type():
    from force_cli.safe_text import first_line

    assert first_line(ValueError("bad header\nTraceback (most recent call last):")) == "bad header"
    assert first_line(KeyError()) == "KeyError" and first_line(RuntimeError("")) == "RuntimeError"
