"""`force` under torchrun: its options pass through torchrun's parser; train and prune under DDP."""

from __future__ import annotations

import pytest
import torch
import typer
from torch.distributed.run import get_args_parser
from typer.testing import CliRunner

from force_cli.checkpoint import save_checkpoint
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
