"""`force` under torchrun: its options pass through torchrun's parser; train and prune under DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from torch.distributed.run import get_args_parser
from typer.testing import CliRunner

from force_cli.checkpoint import load_checkpoint, save_checkpoint
from force_cli.cli import app
from force_cli.models import build_model
from force_cli.pruning.masks import prunable_weights

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


# --------------------------------------------------------------------------------------------
# Two CPU processes (gloo) started by torchrun, against one process with the same global batch
# --------------------------------------------------------------------------------------------

#: 1437 digits training images less round(1437 * 0.0202) = 29 held out leaves 1408 = 44 x 32, so
#: every step of 2 ranks x 16 covers exactly one single-process batch of 32 (no padding).
EVEN_SPLIT = ["--val-fraction", "0.0202"]


def _force(args, cwd, nproc=None):
    """`python -m force_cli ARGS`, or the same under `torchrun --nproc-per-node NPROC`."""
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "FORCE_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    result = subprocess.run([sys.executable, *launcher, "-m", "force_cli", *map(str, args)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_train_like_one_with_twice_the_batch(tmp_path):
    init = _lenet_checkpoint(tmp_path / "lenet.safetensors")
    common = ["train", init, "--epochs", "1", "--device", "cpu", "--no-augment", *EVEN_SPLIT]
    (tmp_path / "two").mkdir()
    two = _force([*common, "--batch-size", "16", "-o", "two/out.safetensors", "--log-file", "two/train.jsonl"],
                 tmp_path, nproc=2)
    one = _force([*common, "--batch-size", "32", "-o", "one.safetensors"], tmp_path)

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
    """Each rank evaluates every other test image; the summed totals are those of the whole split."""
    init = _lenet_checkpoint(tmp_path / "lenet.safetensors")
    args = ["eval", init, "--device", "cpu", "--json", "--quiet", "--batch-size", "50"]
    two = _force(args, tmp_path, nproc=2)
    one = _force(args, tmp_path)
    assert len(two.stdout.strip().splitlines()) == 1  # printed by rank 0 only
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert b["samples"] == a["samples"] == 360
    assert b["top1"] == a["top1"] and b["top5"] == a["top5"]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)  # float32 batch sums, grouped differently
