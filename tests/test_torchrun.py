"""`force` under torchrun: its options pass through torchrun's parser; train and prune under DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import typer
from torch.distributed.run import get_args_parser
from typer.testing import CliRunner

from force_cli.checkpoint import load_checkpoint, save_checkpoint
from force_cli.cli import app
from force_cli.models import build_model
from force_cli.models.refs import trusted_model_code
from force_cli.pruning.masks import prunable_weights
from force_cli.training import ddp
from force_cli.errors import TrainingInterrupted
from force_cli.training.job import train_checkpoint
from force_cli.training.loop import TrainCallbacks
from force_cli.training.state import StopFlag

runner = CliRunner()


def _option_strings():
    """Every (command, option string) of every `force` command, hidden aliases excluded."""
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        for param in command.params:
            if getattr(param, "hidden", False):
                continue
            for opt in [*param.opts, *getattr(param, "secondary_opts", [])]:
                if opt.startswith("-"):
                    yield name, opt


OPTIONS = sorted(set(_option_strings()))


def test_the_option_list_is_not_empty():
    assert ("train", "--log-file") in OPTIONS and ("prune", "--sparsity") in OPTIONS


@pytest.mark.parametrize("command,option", OPTIONS, ids=[f"{c}{o}" for c, o in OPTIONS])
def test_torchrun_leaves_every_option_to_the_script(command, option):
    """torchrun abbreviates its own options even after the script name (`--log` is refused as
    ambiguous with `--log-dir`), so no option of ours may be a prefix of one of torchrun's."""
    try:
        args = get_args_parser().parse_args(["--nproc-per-node", "1", "force_script", command, option])
    except SystemExit:
        pytest.fail(f"torchrun refuses 'force {command} {option}'")
    assert args.training_script_args == [command, option]


def _lenet_checkpoint(path):
    """A random-mask LeNet-300-100 digits checkpoint (no pruning run needed)."""
    torch.manual_seed(0)
    args = dict(num_classes=10, in_channels=1, image_size=8, imagenet_style=False)
    model = build_model("lenet300", **args)
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(w.shape, generator=g) < 0.2 for n, w in prunable_weights(model).items()}
    save_checkpoint(path, model.state_dict(), masks,
                    {"stage": "init", "model": "lenet300", "model_args": args, "dataset": "digits", "seed": 0})
    return path


def test_the_old_log_spelling_still_works_outside_torchrun(tmp_path):
    """`--log` stays a hidden alias of `--log-file`: the same check rejects the same bad path."""
    init = _lenet_checkpoint(tmp_path / "lenet.safetensors")
    result = runner.invoke(app, ["train", str(init), "--log", str(init), "--device", "cpu"])
    assert result.exit_code == 2 and "is the input checkpoint" in result.stderr, result.stderr
    assert "--log " not in runner.invoke(app, ["train", "--help"]).stdout


def test_a_plain_run_starts_no_process_group(monkeypatch):
    from force_cli import distributed

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    with distributed.session("cpu") as device:
        assert device == "cpu" and not distributed.active() and distributed.is_main()
        t = torch.ones(3)
        distributed.all_reduce_mean_([t])
        distributed.barrier()
        assert torch.equal(t, torch.ones(3))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert not distributed.is_main()  # before the group exists, torchrun's RANK decides


def _exit_after_group(tmp_path, code, held=True):
    """(exit status, stdout, stderr) of a process that prints, registers an atexit handler and
    ends through exit_after_group(CODE), with or without a gloo group held."""
    script = (
        "import atexit, sys\n"
        "from force_cli import distributed\n"
        "atexit.register(lambda: print('teardown ran', flush=True))\n"
        f"distributed._held_gloo_group = {held}\n"
        "sys.stdout.write('output before the exit')\n"  # left in the buffer: flushed by the call
        f"distributed.exit_after_group({code!r})\n"
        "sys.exit(7)\n"
    )
    command, env = _command(["-c", script])
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def test_after_a_gloo_group_the_process_ends_without_teardown_and_keeps_its_status_and_output(tmp_path):
    assert _exit_after_group(tmp_path, 3) == (3, "output before the exit", "")
    assert _exit_after_group(tmp_path, None)[:2] == (0, "output before the exit")
    status, out, err = _exit_after_group(tmp_path, "no such file")  # sys.exit's message form
    assert (status, out, err) == (1, "output before the exit", "no such file\n")


def test_without_a_gloo_group_the_process_exits_as_usual(tmp_path):
    status, out, _ = _exit_after_group(tmp_path, 3, held=False)
    assert (status, out) == (7, "output before the exitteardown ran\n")  # returned; sys.exit(7) ran the handler


# --------------------------------------------------------------------------------------------
# Two CPU processes (gloo) started by torchrun, against one process with the same global batch
# --------------------------------------------------------------------------------------------

#: 1437 digits training images less round(1437 * 0.0202) = 29 held out leaves 1408 = 44 x 32, so
#: every step of 2 ranks x 16 covers exactly one single-process batch of 32 (no padding).
EVEN_SPLIT = ["--val-fraction", "0.0202"]


def _command(argv, nproc=None, site=None):
    """(command line, environment) of `python ARGV`, or the same under `torchrun --nproc-per-node NPROC`;
    ``site``: a folder put on the path after the repository (for a sitecustomize.py)."""
    path = os.pathsep.join(str(p) for p in (Path(__file__).resolve().parents[1], site) if p is not None)
    env = os.environ | {"PYTHONPATH": path, "FORCE_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    return [sys.executable, *launcher, *map(str, argv)], env


def _run(argv, cwd, nproc=None, site=None):
    command, env = _command(argv, nproc, site)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _force(args, cwd, nproc=None, site=None):
    """`python -m force_cli ARGS`, or the same under `torchrun --nproc-per-node NPROC`."""
    return _run(["-m", "force_cli", *args], cwd, nproc, site)


def test_two_processes_train_like_one_with_twice_the_batch(tmp_path):
    init = _lenet_checkpoint(tmp_path / "lenet.safetensors")
    common = ["train", init, "--epochs", "1", "--device", "cpu", "--no-augment", *EVEN_SPLIT]
    (tmp_path / "two").mkdir()
    two = _force([*common, "--batch-size", "16", "-o", "two/out.safetensors", "--log-file", "two/train.jsonl"],
                 tmp_path, nproc=2)
    _force([*common, "--batch-size", "32", "-o", "one.safetensors"], tmp_path)

    assert two.stdout.split() == ["two/out.safetensors"]  # printed by rank 0 only
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["out.safetensors", "train.jsonl"]
    assert len((tmp_path / "two" / "train.jsonl").read_text().splitlines()) == 1
    a, b = load_checkpoint(tmp_path / "one.safetensors"), load_checkpoint(tmp_path / "two" / "out.safetensors")
    assert b.metadata["training"]["world_size"] == 2
    for name, weight in a.state_dict.items():
        assert not torch.equal(weight, _initial(init)[name]) or weight.dim() == 0, name  # it trained
        torch.testing.assert_close(b.state_dict[name], weight, rtol=1e-5, atol=1e-5, msg=name)
    assert all(bool((b.state_dict[n][~m] == 0).all()) for n, m in b.masks.items())
    assert b.metadata["metrics"]["train_acc"] == pytest.approx(a.metadata["metrics"]["train_acc"])


def _initial(path):
    return load_checkpoint(path).state_dict


def test_two_processes_prune_the_mask_of_one(tmp_path):
    """Each rank scores 2 of the 4 batches of every step; the all-reduced gradients give the mask
    one process finds on all 4 (FORCE, 3 steps: any mismatch would compound)."""
    args = ["prune", "--model", "lenet300", "--dataset", "digits", "--sparsity", "0.9", "--method", "force",
            "--steps", "3", "--batches", "4", "--batch-size", "32", "--device", "cpu", "--quiet"]
    (tmp_path / "two").mkdir()
    two = _force([*args, "-o", "two/p.safetensors"], tmp_path, nproc=2)
    _force([*args, "-o", "one.safetensors"], tmp_path)
    assert two.stdout.split() == ["two/p.safetensors"]
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["p.safetensors"]
    one, both = load_checkpoint(tmp_path / "one.safetensors").masks, load_checkpoint(tmp_path / "two" / "p.safetensors").masks
    assert set(one) == set(both)
    for name in one:
        assert torch.equal(one[name], both[name]), name


def test_two_processes_evaluate_like_one(tmp_path):
    """Each rank evaluates every other test image; the summed totals are those of the whole split.
    Each rank, having held a gloo group, ends without the interpreter's teardown (where a leftover
    gloo thread could abort it): an atexit handler that a plain run calls never runs there."""
    init = _lenet_checkpoint(tmp_path / "lenet.safetensors")
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import atexit, os, sys\n"
        "atexit.register(lambda: sys.stderr.write(f\"teardown of rank {os.environ.get('RANK', '-')}\\n\"))\n")
    args = ["eval", init, "--device", "cpu", "--json", "--quiet", "--batch-size", "50"]
    two = _force(args, tmp_path, nproc=2, site=tmp_path / "site")
    one = _force(args, tmp_path, site=tmp_path / "site")
    assert "teardown of rank -" in one.stderr  # torchrun's own process tears down too; it holds no RANK
    assert "teardown of rank 0" not in two.stderr and "teardown of rank 1" not in two.stderr, two.stderr[-2000:]
    assert len(two.stdout.strip().splitlines()) == 1  # printed by rank 0 only
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert b["samples"] == a["samples"] == 360
    assert b["top1"] == a["top1"] and b["top5"] == a["top5"]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)  # float32 batch sums, grouped differently


# --------------------------------------------------------------------------------------------
# Stopping under torchrun: the ranks agree on the step, rank 0 saves one partial, it resumes
# --------------------------------------------------------------------------------------------

#: With EVEN_SPLIT and 2 ranks x 16, every epoch has 1408 / 32 = 44 steps.
STEPS = 44

DROPOUT = "tests.custom_models:dropout_mlp"

#: Run under torchrun by the test: an uninterrupted run, then the same run stopped by the flag of
#: one rank only (as if only that rank heard a SIGTERM) at a chosen step.
DRIVER = """
import os, sys
from force_cli import distributed
from force_cli.models.refs import trusted_model_code
from force_cli.errors import TrainingInterrupted
from force_cli.training.job import train_checkpoint
from force_cli.training.loop import TrainCallbacks
from force_cli.training.state import StopFlag

init, stop_rank, stop_epoch, stop_batch = sys.argv[1], *map(int, sys.argv[2:])
rank = int(os.environ["RANK"])
settings = dict(epochs=3, batch_size=16, val_fraction=0.0202, milestones=[2], save_every=0)
flag = StopFlag()

def on_batch(epoch, batches, totals):
    if rank == stop_rank and (epoch, totals.batches) == (stop_epoch, stop_batch):
        flag.set("SIGTERM")

# one process group for both runs (a group set up again in the same process may meet the last one's keys)
with trusted_model_code(), distributed.session("cpu"):
    train_checkpoint(init, "straight.safetensors", settings, device="cpu")
    try:
        train_checkpoint(init, "run/out.safetensors", settings, device="cpu", stop=flag,
                         callbacks=TrainCallbacks(on_batch=on_batch))
    except TrainingInterrupted as exc:
        print(f"rank {rank}: {exc}", flush=True)
distributed.exit_after_group(0)  # as `force` ends a process that held a gloo group
"""


def _dropout_checkpoint(path):
    """A half-masked perceptron with dropout on digits: training draws from every rank's RNG."""
    torch.manual_seed(0)
    args = dict(num_classes=10, in_channels=1, image_size=8, imagenet_style=False)
    with trusted_model_code():
        model = build_model(DROPOUT, **args)
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(w.shape, generator=g) < 0.5 for n, w in prunable_weights(model).items()}
    save_checkpoint(path, model.state_dict(), masks,
                    {"stage": "init", "model": DROPOUT, "model_args": args, "dataset": "digits", "seed": 0})
    return path


def test_a_stop_on_one_rank_leaves_one_partial_that_resumes_exactly(tmp_path, monkeypatch):
    init = _dropout_checkpoint(tmp_path / "mlp.safetensors")
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "run").mkdir()
    stopped = _run(["driver.py", init, 1, 2, 7], tmp_path, nproc=2)  # rank 1 alone, after step 7 of epoch 2

    # both ranks stopped after that very step; rank 0 wrote the one partial
    lines = sorted(stopped.stdout.splitlines())
    assert [line[:7] for line in lines] == ["rank 0:", "rank 1:"], stopped.stdout
    assert all(f"in epoch 2 (after 7 of {STEPS} batches)" in line and "(SIGTERM)" in line for line in lines), lines
    partial = tmp_path / "run" / "out.partial.safetensors"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [partial.name]
    saved = load_checkpoint(partial)
    training = saved.metadata["training"]
    assert saved.stage == "partial" and training["world_size"] == 2
    assert (training["resume"]["epoch"], training["resume"]["batch"]) == (1, 7)
    assert training["resume"]["totals"]["seen"] == 7 * 2 * 16  # summed over both ranks
    rng = saved.extra["rng.cpu"]
    assert rng.shape[0] == 2 and not torch.equal(rng[0], rng[1])  # each rank's own stream

    # a plain run refuses it, naming the world size that wrote it; the file is untouched
    before = partial.read_bytes()
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    refused = runner.invoke(app, ["train", "--resume", str(partial), "--device", "cpu", "--trust-model-code"])
    assert refused.exit_code == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.output
    assert "2 processes" in refused.stderr and "--nproc-per-node 2" in refused.stderr
    assert partial.read_bytes() == before

    # two processes continue it to the weights of the uninterrupted run
    resumed = _force(["train", "--resume", "run/out.partial.safetensors", "--device", "cpu", "--trust-model-code"],
                     tmp_path, nproc=2)
    assert resumed.stdout.split() == ["run/out.safetensors"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["out.safetensors"]
    a, b = load_checkpoint(tmp_path / "straight.safetensors"), load_checkpoint(tmp_path / "run" / "out.safetensors")
    assert a.state_dict.keys() == b.state_dict.keys()
    for name, weight in a.state_dict.items():
        assert torch.equal(b.state_dict[name], weight), name
    assert [r["epoch"] for r in b.metadata["history"]] == [1, 2, 3]
    for ra, rb in zip(a.metadata["history"], b.metadata["history"]):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-12)  # sums regrouped across the stop
        assert {k: v for k, v in rb.items() if k not in ("train_loss", "seconds", "train_seconds", "eval_seconds")} == \
            {k: v for k, v in ra.items() if k not in ("train_loss", "seconds", "train_seconds", "eval_seconds")}


def _child_with_rank(parent: int, rank: int) -> int:
    """The pid of the process torchrun (``parent``) started as rank ``rank``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and env.get("RANK") == str(rank):
            return int(entry.name)
    raise AssertionError(f"torchrun has no rank {rank} child")


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks through /proc")
def test_sigterm_to_one_rank_stops_both_and_rank_0_saves_the_partial(tmp_path):
    """A real SIGTERM to rank 1 only: rank 0, which never heard it, stops after the same step and
    writes the partial; rank 1 writes and prints nothing."""
    init = _lenet_checkpoint(tmp_path / "lenet.safetensors")
    (tmp_path / "run").mkdir()
    command, env = _command(["-m", "force_cli", "train", init, "--epochs", "40", "--device", "cpu", "--batch-size", "16",
                             *EVEN_SPLIT, "--save-every", "1", "-o", "run/out.safetensors"], nproc=2)
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "run" / "out.partial.safetensors"
    try:
        deadline = time.monotonic() + 200
        while not partial.exists():  # the save after epoch 1: training is under way on both ranks
            assert proc.poll() is None and time.monotonic() < deadline, "no partial checkpoint after epoch 1"
            time.sleep(0.02)
        os.kill(_child_with_rank(proc.pid, 1), signal.SIGTERM)
        out, err = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0 and out == ""  # interrupted: nothing trained to print
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [partial.name]
    said = [line for line in err.splitlines() if "progress saved to" in line]
    assert len(said) == 1 and "(SIGTERM)" in said[0], err[-3000:]  # printed by rank 0 alone
    training = load_checkpoint(partial).metadata["training"]
    epoch, batch = training["resume"]["epoch"], training["resume"]["batch"]
    assert training["world_size"] == 2 and 1 <= epoch < 40
    where = f"in epoch {epoch + 1} (after {batch} of {STEPS} batches)" if batch else f"after epoch {epoch}"
    assert where in said[0], (said[0], epoch, batch)  # the partial holds the step rank 0 reports


def test_a_one_process_partial_is_not_resumed_by_two(tmp_path, monkeypatch):
    init = _lenet_checkpoint(tmp_path / "lenet.safetensors")
    flag = StopFlag()
    with pytest.raises(TrainingInterrupted) as info:
        train_checkpoint(init, tmp_path / "out.safetensors", {"epochs": 2, "batch_size": 256}, device="cpu",
                         stop=flag, catch_signals=False, callbacks=TrainCallbacks(on_batch=lambda *a: flag.set("test")))
    before = info.value.partial.read_bytes()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    result = runner.invoke(app, ["train", "--resume", str(info.value.partial), "--device", "cpu"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "1 process and this one has 2" in result.stderr and "without torchrun" in result.stderr
    assert info.value.partial.read_bytes() == before and not (tmp_path / "out.safetensors").exists()


def test_sync_bn_under_torchrun_on_cpu_is_refused_before_anything_starts(tmp_path, monkeypatch):
    init = _lenet_checkpoint(tmp_path / "lenet.safetensors")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  sync_bn: true\n")
    for extra in (["--sync-bn", "--device", "cpu"], ["--recipe", str(recipe), "--device", "cpu"]):
        result = runner.invoke(app, ["train", str(init), "-o", str(tmp_path / "out.safetensors"), *extra])
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
        assert "--sync-bn needs CUDA" in result.stderr and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet.safetensors", "r.yaml"]


def test_sync_bn_in_one_process_changes_nothing_and_is_recorded(tmp_path):
    init = _lenet_checkpoint(tmp_path / "lenet.safetensors")
    common = ["train", str(init), "--epochs", "1", "--batch-size", "64", "--device", "cpu"]
    plain = runner.invoke(app, [*common, "-o", str(tmp_path / "plain.safetensors")])
    synced = runner.invoke(app, [*common, "--sync-bn", "-o", str(tmp_path / "synced.safetensors")])
    assert plain.exit_code == 0 and synced.exit_code == 0, synced.output
    assert "--sync-bn has no effect in a single process" in synced.stderr
    a, b = load_checkpoint(tmp_path / "plain.safetensors"), load_checkpoint(tmp_path / "synced.safetensors")
    assert a.metadata["training"]["sync_bn"] is False and b.metadata["training"]["sync_bn"] is True
    for name, weight in a.state_dict.items():
        assert torch.equal(b.state_dict[name], weight), name


def test_sweep_under_torchrun_is_refused_with_a_pointer(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["sweep", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "torchrun" in result.stderr and "README" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_each_rank_has_its_own_seed():
    seeds = [ddp.rank_seed(5, r) for r in range(4)]
    assert seeds[0] == 5 and len(set(seeds)) == 4
    assert all(s >= 2**32 for s in seeds[1:])  # never another run's --seed (seeds are below 2**32)


#: Run under torchrun: rank 1 alone gets a NaN loss at step 7 of epoch 2 (as from one bad batch).
DIVERGING_DRIVER = """
import os, sys
import torch.nn.functional as F
from force_cli import distributed
from force_cli.models.refs import trusted_model_code
from force_cli.training import loop
from force_cli.training.job import train_checkpoint
from force_cli.errors import TrainingDiverged
from force_cli.training.loop import TrainCallbacks

init = sys.argv[1]
rank = int(os.environ["RANK"])
armed = []

def cross_entropy(*args, **kwargs):
    loss = F.cross_entropy(*args, **kwargs)
    return loss * float("nan") if armed and armed.pop() else loss

def on_batch(epoch, batches, totals):
    if rank == 1 and (epoch, totals.batches) == (2, 6):
        armed.append(True)  # the next loss computed, step 7's, is NaN

loop.F = type("F", (), {"cross_entropy": staticmethod(cross_entropy)})
settings = dict(epochs=3, batch_size=16, val_fraction=0.0202, milestones=[2], save_every=1)
with trusted_model_code(), distributed.session("cpu"):
    try:
        train_checkpoint(init, "run/out.safetensors", settings, device="cpu",
                         callbacks=TrainCallbacks(on_batch=on_batch))
    except TrainingDiverged as exc:
        print(f"rank {rank}: {exc}", flush=True)
distributed.exit_after_group(0)  # as `force` ends a process that held a gloo group
"""


def test_a_nan_loss_on_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """Without the ranks agreeing, rank 0 would wait for rank 1 in the next collective until
    torchrun killed it; now both report the divergence and the epoch-1 partial is kept."""
    init = _dropout_checkpoint(tmp_path / "mlp.safetensors")
    (tmp_path / "driver.py").write_text(DIVERGING_DRIVER)
    (tmp_path / "run").mkdir()
    result = _run(["driver.py", init], tmp_path, nproc=2)
    lines = sorted(line for line in result.stdout.splitlines() if line.startswith("rank "))
    assert [line[:7] for line in lines] == ["rank 0:", "rank 1:"], result.stdout + result.stderr[-2000:]
    assert all("training diverged: the training loss became nan in epoch 2" in line for line in lines), lines
    assert all("after epoch 1" in line for line in lines), lines
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["out.partial.safetensors"]
    assert load_checkpoint(tmp_path / "run" / "out.partial.safetensors").metadata["training"]["resume"]["epoch"] == 1
