"""What `prune` checks about its own result (collapse, unranked steps), the objective it records,
and that its batches never include the images `train` holds out for validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from force_cli.checkpoint import load_checkpoint
from force_cli.cli import app
from force_cli.config import PruneConfig
from force_cli.data import load_datasets
from force_cli.errors import DisconnectedError
from force_cli.pruning import job, prune
from force_cli.data.holdout import pruned_fraction
from tests.helpers import FixedStream, random_batches

runner = CliRunner()
DIGITS = ["--model", "lenet300", "--dataset", "digits", "--batch-size", "64", "--quiet"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def dead_mlp() -> nn.Sequential:
    """A ReLU MLP whose hidden units never fire: every weight's gradient, hence every score, is 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
    return model


def test_a_last_step_without_ranking_and_a_dead_output_layer_are_detected():
    model = dead_mlp()
    result = prune(model, method="force", sparsity=0.9, steps=2, stream=FixedStream(random_batches(2, 16, 6, 3)))
    assert result.unranked_steps == [1, 2]
    # with nothing to rank, the first weights in layer order are kept: the output layer is empty
    assert not result.masks["2.weight"].any()
    with pytest.raises(DisconnectedError, match="output layer '2.weight' keeps no weight.*--allow-disconnected"):
        job.check_connectivity(model, result, (6,), allow=False)
    found = job.check_connectivity(model, result, (6,), allow=True)
    assert found["disconnected"] and found["effective_density"] == 0
    assert any("chosen by position" in w for w in result.warnings)
    assert any("cannot learn" in w for w in result.warnings)
    assert DisconnectedError.exit_code == 1


def test_a_healthy_result_passes_without_warnings():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 20), nn.Tanh(), nn.Linear(20, 3))
    result = prune(model, method="force", sparsity=0.8, steps=3, stream=FixedStream(random_batches(3, 16, 6, 3)))
    found = job.check_connectivity(model, result, (6,), allow=False)
    assert not found["disconnected"] and 0 < found["effective_density"] <= 0.2 + 1e-9
    assert result.warnings == [] and result.unranked_steps == []


def test_cli_records_the_objective_and_the_pruning_result(tmp_path):
    out = tmp_path / "p.safetensors"
    result = run("prune", *DIGITS, "--sparsity", "0.9", "--steps", "3", "-o", out)
    assert result.exit_code == 0, result.stderr
    meta = load_checkpoint(out).metadata
    assert meta["pruning"]["saliency_loss"] == "true-logit" and meta["pruning"]["saliency_temperature"] is None
    assert meta["pruning"]["val_fraction"] == 0.1  # digits trains with 10% held out
    assert meta["pruning_result"]["disconnected"] is False
    assert 0 < meta["pruning_result"]["effective_density"] <= 0.1 + 1e-9

    out = tmp_path / "g.safetensors"
    result = run("prune", *DIGITS, "--sparsity", "0.9", "--method", "grasp", "-o", out)
    assert result.exit_code == 0, result.stderr
    pruning = load_checkpoint(out).metadata["pruning"]
    assert (pruning["saliency_loss"], pruning["saliency_temperature"]) == ("cross-entropy", 200.0)

    out = tmp_path / "t.safetensors"
    result = run("prune", *DIGITS, "--sparsity", "0.9", "--steps", "2", "--saliency-temperature", "3", "-o", out)
    assert result.exit_code == 0, result.stderr
    pruning = load_checkpoint(out).metadata["pruning"]
    assert (pruning["saliency_loss"], pruning["saliency_temperature"]) == ("cross-entropy", 3.0)


@pytest.mark.parametrize("args,message", [
    (["--saliency-loss", "mse"], "unknown saliency loss 'mse'"),
    (["--saliency-temperature", "0"], "positive"),
    (["--saliency-loss", "true-logit", "--saliency-temperature", "2"], "cross-entropy only"),
    (["--val-fraction", "1.5"], "outside [0, 1)"),
])
def test_bad_objective_settings_are_one_line_errors(tmp_path, args, message):
    out = tmp_path / "x.safetensors"
    result = run("prune", *DIGITS, "--sparsity", "0.9", "-o", out, *args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_pruning_batches_come_from_the_training_part_only(monkeypatch, tmp_path):
    seen = []
    real = job.BatchStream

    def recording(dataset, *args, **kwargs):
        seen.append(dataset)
        return real(dataset, *args, **kwargs)

    monkeypatch.setattr(job, "BatchStream", recording)
    cfg = PruneConfig(model="lenet300", dataset="digits", sparsity=0.5, steps=1, seed=3)
    job.prune_to_checkpoint(cfg, tmp_path / "p.safetensors")
    (dataset,) = seen
    # the split `force train` makes by default: the recorded fraction, the checkpoint's seed
    meta = load_checkpoint(tmp_path / "p.safetensors").metadata
    assert pruned_fraction(meta) == 0.1
    splits = load_datasets("digits", val_fraction=0.1, seed=3)
    assert set(dataset.indices) == set(splits.train.indices)
    assert not set(dataset.indices) & set(splits.val.indices)


def test_an_empty_first_layer_disconnects_even_with_a_full_output_layer():
    from force_cli.pruning.loop import PruneResult

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    masks = {"0.weight": torch.zeros(8, 6, dtype=torch.bool), "2.weight": torch.ones(3, 8, dtype=torch.bool)}
    result = PruneResult(masks=masks, total=72, kept=24, steps=1)
    with pytest.raises(DisconnectedError, match="no path of kept weights"):
        job.check_connectivity(model, result, (6,), allow=False)


def test_the_holdout_of_an_imagefolder_dataset_uses_its_data_dir(tmp_path, monkeypatch):
    """The default held-out fraction is looked up for the resolved dataset, never by re-reading a
    default data folder that an imagefolder run does not use."""
    from tests.test_data import write_image_folder

    monkeypatch.setenv("FORCE_DATA", str(tmp_path / "elsewhere"))  # no imagefolder there
    write_image_folder(tmp_path / "images", "val")
    out = tmp_path / "p.safetensors"
    result = run("prune", "--model", "lenet5", "--dataset", "imagefolder", "--data-dir", tmp_path / "images",
                 "--method", "magnitude", "--sparsity", "0.5", "--quiet", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert load_checkpoint(out).metadata["pruning"]["val_fraction"] == 0.0


def test_training_warns_when_its_validation_split_is_not_the_one_pruning_held_out(tmp_path):
    from force_cli.data.holdout import mismatch as holdout_mismatch

    meta = {"seed": 3, "pruning": {"val_fraction": 0.1}}
    assert holdout_mismatch(meta, 0.1, 3) == []
    assert holdout_mismatch(meta, 0.0, 5) == []  # no validation split: nothing to leak into
    assert "pruning may have seen" in holdout_mismatch(meta, 0.2, 3)[0]
    assert "seed 3" in holdout_mismatch(meta, 0.1, 4)[0]
    assert holdout_mismatch({"seed": 3}, 0.1, 4) == []  # made before pruning recorded its holdout

    out = tmp_path / "p.safetensors"
    assert run("prune", *DIGITS, "--sparsity", "0.9", "--steps", "2", "-o", out).exit_code == 0
    result = run("train", out, "--epochs", "1", "--seed", "7", "--device", "cpu", "-q", "-o", tmp_path / "t.safetensors")
    assert result.exit_code == 0, result.stderr
    assert "pruning may have seen some validation images" in result.stderr
