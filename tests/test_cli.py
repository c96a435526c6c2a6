"""The CLI surface of `force prune` and `force inspect`: outputs, determinism and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from force_cli.checkpoint import load_checkpoint, save_checkpoint
from force_cli.cli import app

runner = CliRunner()
DIGITS = ["--model", "lenet300", "--dataset", "digits", "--batch-size", "64", "--quiet"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def prune_digits(tmp_path, name="p.safetensors", *extra):
    out = tmp_path / name
    result = run("prune", *DIGITS, "--sparsity", "0.99", "--steps", "5", "-o", out, *extra)
    assert result.exit_code == 0, result.stderr
    return out, result


def test_prune_prints_only_the_path_and_keeps_exactly_k(tmp_path):
    out, result = prune_digits(tmp_path)
    assert result.stdout.strip() == str(out)
    ckpt = load_checkpoint(out)
    total = sum(m.numel() for m in ckpt.masks.values())
    assert total == 64 * 300 + 300 * 100 + 100 * 10
    assert sum(int(m.sum()) for m in ckpt.masks.values()) == round(0.01 * total)
    meta = ckpt.metadata
    assert (meta["stage"], meta["model"], meta["dataset"], meta["method"]) == ("init", "lenet300", "digits", "force")
    assert meta["pruning"]["steps"] == 5 and meta["pruning"]["schedule"] == "exp"
    assert meta["target_sparsity"] == 0.99 and abs(meta["achieved_sparsity"] - 0.99) < 1e-4
    assert meta["model_args"] == {"num_classes": 10, "in_channels": 1, "image_size": 8, "imagenet_style": False}
    for key in ("torch_version", "force_cli_version", "created", "seed", "init"):
        assert key in meta
    for name, mask in ckpt.masks.items():  # pruned weights are stored as zero
        assert not ckpt.state_dict[name][~mask].any()


def test_same_seed_gives_bit_identical_checkpoint_tensors_and_another_seed_does_not(tmp_path):
    a, _ = prune_digits(tmp_path, "a.safetensors")
    b, _ = prune_digits(tmp_path, "b.safetensors")
    c, _ = prune_digits(tmp_path, "c.safetensors", "--seed", "1")
    ca, cb, cc = load_checkpoint(a), load_checkpoint(b), load_checkpoint(c)
    for name in ca.masks:
        assert torch.equal(ca.masks[name], cb.masks[name])
    for name in ca.state_dict:
        assert torch.equal(ca.state_dict[name], cb.state_dict[name])
    assert any(not torch.equal(ca.masks[n], cc.masks[n]) for n in ca.masks)


def test_saved_weights_are_the_seeded_initialisation_untouched_by_pruning(tmp_path):
    from force_cli.models import build_model

    out, _ = prune_digits(tmp_path)
    ckpt = load_checkpoint(out)
    torch.manual_seed(0)
    fresh = build_model("lenet300", num_classes=10, in_channels=1, image_size=8).state_dict()
    for name, value in fresh.items():
        expected = value * ckpt.masks[name] if name in ckpt.masks else value
        assert torch.equal(ckpt.state_dict[name], expected), name


@pytest.mark.parametrize("method", ["force", "iter-snip", "grasp-it", "snip", "grasp", "synflow", "magnitude", "random"])
def test_every_method_runs_through_the_cli(tmp_path, method):
    out = tmp_path / f"{method}.safetensors"
    result = run("prune", *DIGITS, "--method", method, "--sparsity", "0.95", "--steps", "3", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert load_checkpoint(out).metadata["method"] == method


def test_recipe_supplies_defaults_and_flags_win(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: lenet300\ndataset: digits\nseed: 3\nprune:\n  method: snip\n  sparsity: 0.9\n  batch_size: 32\n")
    out = tmp_path / "r.safetensors"
    result = run("prune", "--recipe", recipe, "--sparsity", "0.8", "-o", out, "--quiet")
    assert result.exit_code == 0, result.stderr
    meta = load_checkpoint(out).metadata
    assert meta["method"] == "snip" and meta["seed"] == 3 and meta["pruning"]["batch_size"] == 32
    assert meta["target_sparsity"] == 0.8


def test_inspect_json_reports_layers_totals_and_effective_density(tmp_path):
    out, _ = prune_digits(tmp_path)
    result = run("inspect", out, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [row["layer"] for row in report["layers"]] == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert report["totals"]["kept"] == 502 and report["totals"]["weights"] == 50200
    assert 0 < report["totals"]["effective_kept"] <= report["totals"]["kept"]
    assert report["metadata"]["method"] == "force" and report["disconnected"] is False
    table = run("inspect", out)
    assert table.exit_code == 0 and "fc2.weight" in table.stdout and "effective" in table.stdout


def test_inspect_flags_an_empty_layer_and_a_disconnected_network(tmp_path):
    out, _ = prune_digits(tmp_path)
    ckpt = load_checkpoint(out)
    ckpt.masks["fc2.weight"][:] = False
    broken = tmp_path / "broken.safetensors"
    save_checkpoint(broken, ckpt.state_dict, ckpt.masks, ckpt.metadata)
    report = json.loads(run("inspect", broken, "--json").stdout)
    assert report["empty_layers"] == ["fc2.weight"]
    assert report["disconnected"] is True and report["totals"]["effective_kept"] == 0
    assert "disconnected" in run("inspect", broken).stdout


def assert_clean_failure(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("args,fragments", [
    (["--model", "resnet9000"], ["unknown model 'resnet9000'", "lenet300", "vgg19"]),
    (["--dataset", "cifar11"], ["unknown dataset 'cifar11'", "cifar10", "digits"]),
    (["--method", "obd"], ["unknown method 'obd'", "force", "synflow"]),
    (["--schedule", "cosine"], ["unknown schedule 'cosine'", "exp, linear"]),
    (["--init", "zeros"], ["unknown init 'zeros'", "kaiming-normal"]),
    (["--sparsity", "1.0"], ["outside [0, 1)"]),
    (["--sparsity", "-0.5"], ["outside [0, 1)"]),
    (["--sparsity", "0.99999999"], ["fewer than one"]),
    (["--model", "lenet5"], ["lenet5", "lenet300"]),
    (["--batches", "0"], ["--batches must be at least 1"]),
])
def test_bad_prune_input_is_one_line_exit_2_and_leaves_no_file(tmp_path, args, fragments):
    out = tmp_path / "x.safetensors"
    base = dict(zip(DIGITS[0:6:2], DIGITS[1:6:2])) | {"--sparsity": "0.9"}
    base.update(dict(zip(args[0::2], args[1::2])))
    flat = [item for pair in base.items() for item in pair]
    assert_clean_failure(run("prune", *flat, "--quiet", "-o", out), *fragments)
    assert list(tmp_path.iterdir()) == []


def test_missing_model_and_sparsity_name_the_flag(tmp_path):
    assert_clean_failure(run("prune", "--dataset", "digits", "--sparsity", "0.5"), "--model")
    assert_clean_failure(run("prune", "--dataset", "digits", "--model", "lenet300"), "--sparsity")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_but_absent(tmp_path):
    assert_clean_failure(run("prune", *DIGITS, "--sparsity", "0.9", "--device", "cuda", "-o", tmp_path / "x.safetensors"),
                         "CUDA is not available", "--device cpu")
    assert list(tmp_path.iterdir()) == []


def test_output_in_a_missing_folder_and_existing_output_are_refused(tmp_path):
    assert_clean_failure(run("prune", *DIGITS, "--sparsity", "0.9", "-o", tmp_path / "no" / "x.safetensors"),
                         "does not exist")
    existing = tmp_path / "keep.safetensors"
    existing.write_bytes(b"precious")
    assert_clean_failure(run("prune", *DIGITS, "--sparsity", "0.9", "-o", existing), "already exists", "--overwrite")
    assert existing.read_bytes() == b"precious"


def test_dataset_absent_and_not_downloadable_is_one_line(tmp_path):
    result = run("prune", "--model", "resnet18", "--dataset", "cifar10", "--sparsity", "0.9", "--no-download",
                 "--data-dir", tmp_path, "--quiet", "-o", tmp_path / "x.safetensors")
    assert_clean_failure(result, "--no-download")


def test_bad_recipe_names_the_key_and_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: lenet300\nprune:\n  sparsty: 0.9\n")
    assert_clean_failure(run("prune", "--recipe", recipe), "sparsty", "r.yaml")
    recipe.write_text("model: lenet300\nprune:\n  steps: many\n")
    assert_clean_failure(run("prune", "--recipe", recipe), "'steps' must be int", "r.yaml")
    recipe.write_text("model: [unclosed\n")
    assert_clean_failure(run("prune", "--recipe", recipe), "not valid YAML")


@pytest.mark.parametrize("content", [b"", b"garbage" * 50, None])
def test_inspect_refuses_missing_and_corrupt_checkpoints(tmp_path, content):
    path = tmp_path / "c.safetensors"
    if content is not None:
        path.write_bytes(content)
    assert_clean_failure(run("inspect", path), str(path))


def test_inspect_refuses_masks_that_do_not_fit_the_model(tmp_path):
    out, _ = prune_digits(tmp_path)
    ckpt = load_checkpoint(out)
    meta = ckpt.metadata | {"model_args": ckpt.metadata["model_args"] | {"image_size": 9}}
    bad = tmp_path / "bad.safetensors"
    save_checkpoint(bad, ckpt.state_dict, ckpt.masks, meta)
    assert_clean_failure(run("inspect", bad), "fc1.weight", "different model")


def test_version_help_examples_and_module_entry_point():
    assert run("--version").stdout.startswith("force-cli ")
    for command in ("prune", "inspect", "train", "eval", "sweep"):
        result = run(command, "--help")
        assert result.exit_code == 0 and "Example" in result.stdout
    proc = subprocess.run([sys.executable, "-m", "force_cli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "prune" in proc.stdout


def test_the_training_outcomes_are_mapped_to_exit_codes_in_one_place(monkeypatch):
    """run_wrapper alone turns a diverged run into one 'error:' line and exit 1, and an interrupted
    one (progress saved) into a plain line and exit 130 or 143; a silent torchrun rank prints nothing."""
    import typer

    from force_cli.cli import console, status
    from force_cli.errors import TrainingDiverged, TrainingInterrupted

    lines = []
    monkeypatch.setattr(status, "error_line", lambda message: lines.append("error: " + message))
    monkeypatch.setattr(status, "plain_line", lines.append)
    assert console.error_line is not status.error_line  # the patch is status's own reference

    def exit_code(exc: Exception) -> int:
        @status.run_wrapper
        def command():
            raise exc

        with pytest.raises(typer.Exit) as info:
            command()
        return info.value.exit_code

    assert exit_code(TrainingDiverged("training diverged: the loss became nan")) == 1
    assert exit_code(TrainingInterrupted("interrupted (SIGTERM) after epoch 1", "p.partial.safetensors", "SIGTERM")) == 143
    assert exit_code(TrainingInterrupted("interrupted (SIGINT)", "p", "SIGINT", announce=False)) == 130
    assert lines == ["error: training diverged: the loss became nan", "interrupted (SIGTERM) after epoch 1"]
