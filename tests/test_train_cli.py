"""`force train` and `force eval` through the CLI: the digits pipeline end to end, bad input, Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from force_cli.checkpoint import load_checkpoint, save_checkpoint
from force_cli.cli import app
from force_cli.models import build_model
from force_cli.pruning.masks import prunable_weights

runner = CliRunner()

#: Test accuracy observed for prune (force, 99%) -> train (digits defaults: 100 epochs) on
#: digits with LeNet-300-100: 0.897 (chance: 0.1). The threshold leaves a wide margin.
DIGITS_MIN_TEST_ACC = 0.75


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code=2):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def init_ckpt(tmp_path_factory):
    """A small random-mask LeNet-300-100 digits checkpoint (no pruning run needed)."""
    path = tmp_path_factory.mktemp("init") / "lenet.safetensors"
    torch.manual_seed(0)
    args = dict(num_classes=10, in_channels=1, image_size=8, imagenet_style=False)
    model = build_model("lenet300", **args)
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(w.shape, generator=g) < 0.1 for n, w in prunable_weights(model).items()}
    save_checkpoint(path, model.state_dict(), masks,
                    {"stage": "init", "model": "lenet300", "model_args": args, "dataset": "digits", "seed": 0})
    return path


def test_prune_train_eval_on_digits_end_to_end(tmp_path):
    pruned = tmp_path / "lenet.safetensors"
    result = invoke("prune", "--model", "lenet300", "--dataset", "digits", "--sparsity", "0.99",
                    "--method", "force", "-o", pruned, "--quiet")
    assert result.exit_code == 0, result.output
    log = tmp_path / "train.jsonl"
    result = invoke("train", pruned, "--log-file", log, "--device", "cpu")
    assert result.exit_code == 0, result.output
    trained = Path(result.stdout.strip())
    assert trained == tmp_path / "lenet-trained.safetensors" and trained.exists()
    assert "epoch 100" in result.stderr  # per-epoch log lines on stderr
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 100 and records[-1]["epoch"] == 100
    assert records[0]["lr"] == 0.1 and records[-1]["lr"] == pytest.approx(0.001)

    result = invoke("eval", trained, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["samples"] == 360 and report["density"] == pytest.approx(0.01, abs=1e-4)
    assert report["top1"] >= DIGITS_MIN_TEST_ACC, report  # chance is 0.1; observed 0.897
    assert report["top5"] >= report["top1"]
    ckpt = load_checkpoint(trained)
    assert ckpt.stage == "trained" and ckpt.metadata["method"] == "force"
    assert ckpt.metadata["metrics"]["test_acc"] == pytest.approx(report["top1"], abs=1e-9)
    table = invoke("eval", trained, "--split", "val")
    assert table.exit_code == 0 and "top-1 accuracy" in table.stdout
    assert invoke("inspect", trained).exit_code == 0


def test_train_flags_and_recipe(tmp_path, init_ckpt):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 3\ntrain:\n  epochs: 2\n  lr: 0.05\n  batch_size: 256\n  milestones: [1]\n")
    out = tmp_path / "out.safetensors"
    result = invoke("train", init_ckpt, "-o", out, "--recipe", recipe, "--lr", "0.02", "--optimizer", "adam",
                    "--lr-schedule", "cosine", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # --quiet
    training = load_checkpoint(out).metadata["training"]
    assert (training["epochs"], training["lr"], training["optimizer"], training["seed"]) == (2, 0.02, "adam", 3)
    assert training["batch_size"] == 256 and training["lr_schedule"] == "cosine"
    assert training["source"] == str(init_ckpt)


def test_bad_input_is_one_line_exit_2_and_leaves_files_alone(tmp_path, init_ckpt):
    before = init_ckpt.read_bytes()
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    assert "not a force checkpoint" in one_line_error(invoke("train", plain))
    assert "not a force checkpoint" in one_line_error(invoke("eval", plain))
    assert "does not exist" in one_line_error(invoke("train", tmp_path / "missing.safetensors"))

    misfit = tmp_path / "misfit.safetensors"  # a well-formed file whose masks do not fit its model
    ckpt = load_checkpoint(init_ckpt)
    save_checkpoint(misfit, ckpt.state_dict, {k: v for k, v in ckpt.masks.items() if k != "fc3.weight"}, ckpt.metadata)
    assert "no mask for prunable weight 'fc3.weight'" in one_line_error(invoke("train", misfit))
    assert "no mask for prunable weight 'fc3.weight'" in one_line_error(invoke("eval", misfit))
    reshaped = tmp_path / "reshaped.safetensors"  # metadata for 9x9 inputs, weights for 8x8: refused as it is read
    save_checkpoint(reshaped, ckpt.state_dict, ckpt.masks,
                    ckpt.metadata | {"model_args": ckpt.metadata["model_args"] | {"image_size": 9}})
    assert "'fc1.weight' has shape (300, 64) but model 'lenet300' needs (300, 81)" in one_line_error(invoke("train", reshaped))

    assert "holds no training state" in one_line_error(invoke("train", "--resume", init_ckpt))
    assert "100 classes" in one_line_error(invoke("eval", init_ckpt, "--dataset", "cifar100"))
    assert "unknown split" in one_line_error(invoke("eval", init_ckpt, "--split", "dev"))
    assert "unknown optimizer" in one_line_error(invoke("train", init_ckpt, "--optimizer", "rmsprop"))
    assert "--milestones" in one_line_error(invoke("train", init_ckpt, "--milestones", "a,b"))
    assert "--epochs" in one_line_error(invoke("train", init_ckpt, "--epochs", "0"))
    if not torch.cuda.is_available():
        assert "CUDA is not available" in one_line_error(invoke("train", init_ckpt, "--device", "cuda"))
        assert "CUDA is not available" in one_line_error(invoke("eval", init_ckpt, "--device", "cuda"))
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"keep me")
    assert "already exists" in one_line_error(invoke("train", init_ckpt, "-o", taken))
    assert "overwrite the input" in one_line_error(invoke("train", init_ckpt, "-o", init_ckpt, "--overwrite"))
    assert "no checkpoint given" in one_line_error(invoke("train"))
    assert init_ckpt.read_bytes() == before and taken.read_bytes() == b"keep me"
    assert not list(init_ckpt.parent.glob("*-trained*"))


def test_nan_loss_exits_1_with_a_clear_message(tmp_path, init_ckpt):
    out = tmp_path / "nan.safetensors"
    result = invoke("train", init_ckpt, "-o", out, "--lr", "1e30", "--epochs", "3", "--device", "cpu", "--quiet")
    line = one_line_error(result, code=1)
    assert "diverged" in line and "lower learning rate" in line
    assert not out.exists()


def test_ctrl_c_saves_progress_and_resume_finishes(tmp_path, init_ckpt):
    out = tmp_path / "run.safetensors"
    partial = tmp_path / "run.partial.safetensors"
    cmd = [sys.executable, "-m", "force_cli", "train", str(init_ckpt), "-o", str(out), "--epochs", "100000",
           "--batch-size", "512", "--save-every", "1", "--device", "cpu"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not partial.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert f"force train --resume {partial}" in stderr and stdout == ""
    assert not out.exists()
    done = load_checkpoint(partial).metadata["training"]["resume"]["epoch"]
    result = invoke("train", "--resume", partial, "--epochs", done + 2, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out) and not partial.exists()
    assert len(load_checkpoint(out).metadata["history"]) == done + 2


def test_compile_flag_and_recipe_key_reach_the_run_and_fall_back_with_one_warning(tmp_path, init_ckpt, monkeypatch):
    """`--compile` (and `compile: true` in a recipe) is recorded with the settings; where
    torch.compile cannot run (here: no C++ compiler) train warns in one line and trains eagerly."""
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    out = tmp_path / "c.safetensors"
    result = invoke("train", init_ckpt, "-o", out, "--epochs", "1", "--compile", "--device", "cpu")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "--compile" in line]
    assert len(warnings) == 1 and "needs a C++ compiler" in warnings[0] and "training without it" in warnings[0]
    assert load_checkpoint(out).metadata["training"]["compile"] is True
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  compile: true\n  epochs: 1\n")
    result = invoke("train", init_ckpt, "-o", tmp_path / "r.safetensors", "--recipe", recipe, "--device", "cpu",
                    "--quiet")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "r.safetensors").metadata["training"]["compile"] is True
    result = invoke("train", init_ckpt, "-o", tmp_path / "n.safetensors", "--recipe", recipe, "--no-compile",
                    "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "n.safetensors").metadata["training"]["compile"] is False
