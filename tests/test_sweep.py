"""`force sweep`: the grid runs through the library's prune/train/eval and resumes after interruption."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from force_cli.cli import app
from force_cli.config import load_recipe
from force_cli.sweep import SweepHooks, append_result, expand_grid, read_results, run_sweep, sweep_settings
from force_cli.errors import TrainingInterrupted
from force_cli.training.loop import TrainCallbacks

RECIPE = """model: lenet300
dataset: digits
prune:
  steps: 3
  batch_size: 64
train:
  epochs: 3
  milestones: [2]
  save_every: 1
sweep:
  title: test
  methods: [force, random]
  sparsities: [0.9]
  seeds: [0, 1]
"""
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    return load_recipe(path)


def accuracies(out):
    return {r["cell"]: r["test_acc"] for r in read_results(out / "results.jsonl")}


@pytest.fixture
def uninterrupted(recipe, tmp_path):
    out = tmp_path / "straight"
    run_sweep(recipe, out)
    return accuracies(out)


def test_a_sweep_writes_one_line_and_checkpoints_per_cell(recipe, tmp_path, uninterrupted):
    out = tmp_path / "straight"
    records = read_results(out / "results.jsonl")
    assert [r["cell"] for r in records] == ["force-s0.9-seed0", "random-s0.9-seed0", "force-s0.9-seed1", "random-s0.9-seed1"]
    for r in records:
        assert 0.0 <= r["test_acc"] <= 1.0 and r["test_samples"] == 360
        assert abs(r["achieved_sparsity"] - 0.9) < 1e-3
        assert (out / r["pruned"]).is_file() and (out / r["trained"]).is_file()
    # a re-run has nothing left to do
    assert run_sweep(recipe, out) == []
    assert len(read_results(out / "results.jsonl")) == 4


def test_interrupted_between_cells_resumes_with_only_the_missing_cells(recipe, tmp_path, uninterrupted):
    out = tmp_path / "interrupted"
    started = []

    def stop_at_third(cell, index, total):
        started.append(cell.key)
        if len(started) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(recipe, out, SweepHooks(on_cell_start=stop_at_third))
    assert len(read_results(out / "results.jsonl")) == 2
    resumed = []
    run_sweep(recipe, out, SweepHooks(on_cell_start=lambda cell, i, n: resumed.append(cell.key)))
    assert resumed == ["force-s0.9-seed1", "random-s0.9-seed1"]
    assert accuracies(out) == uninterrupted


def test_interrupted_mid_training_resumes_the_cell_from_its_partial_checkpoint(recipe, tmp_path, uninterrupted):
    out = tmp_path / "mid"
    epochs_seen = []

    def ctrl_c_after_first_epoch(record):
        epochs_seen.append(record["epoch"])
        if len(epochs_seen) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does; training saves a partial checkpoint

    with pytest.raises(TrainingInterrupted):
        run_sweep(recipe, out, SweepHooks(train_callbacks=TrainCallbacks(on_epoch=ctrl_c_after_first_epoch)))
    cell = out / "cells" / "force-s0.9-seed0"
    assert (cell / "trained.partial.safetensors").is_file() and not (cell / "trained.safetensors").exists()
    assert read_results(out / "results.jsonl") == []
    epochs_seen.clear()
    run_sweep(recipe, out, SweepHooks(train_callbacks=TrainCallbacks(on_epoch=lambda r: epochs_seen.append(r["epoch"]))))
    assert epochs_seen[:2] == [2, 3]  # the first cell continued from epoch 2, it did not start over
    assert not (cell / "trained.partial.safetensors").exists()
    assert accuracies(out) == uninterrupted


def test_a_line_cut_short_by_an_interruption_does_not_swallow_the_next(tmp_path):
    (tmp_path / "results.jsonl").write_text(json.dumps({"cell": "a", "method": "force", "sparsity": 0.9,
                                                        "test_acc": 0.5}) + "\n" + '{"cell": "b", "meth')
    append_result(tmp_path, {"cell": "c", "method": "force", "sparsity": 0.9, "test_acc": 0.7})
    assert [r["cell"] for r in read_results(tmp_path / "results.jsonl")] == ["a", "c"]


def test_cli_dry_run_report_and_errors(recipe, tmp_path, uninterrupted):
    runner = CliRunner()
    out = tmp_path / "straight"
    dry = runner.invoke(app, ["sweep", str(recipe.path), "--out", str(out), "--dry-run"])
    assert dry.exit_code == 0
    assert dry.stdout.splitlines() == ["done\tforce-s0.9-seed0", "done\trandom-s0.9-seed0",
                                       "done\tforce-s0.9-seed1", "done\trandom-s0.9-seed1"]
    fresh = runner.invoke(app, ["sweep", str(recipe.path), "--out", str(tmp_path / "new"), "--dry-run"])
    assert fresh.stdout.count("todo\t") == 4 and not (tmp_path / "new").exists()
    assert not (out / "results.md").exists()  # the library run writes results only; the report is separate
    report = runner.invoke(app, ["sweep", "--report", str(out)])
    assert report.exit_code == 0 and (out / "results.md").is_file() and "force" in report.stdout
    no_sweep = tmp_path / "plain.yaml"
    no_sweep.write_text("model: lenet300\n")
    bad = runner.invoke(app, ["sweep", str(no_sweep)])
    assert bad.exit_code == 2 and "no 'sweep:' section" in bad.stderr
    assert runner.invoke(app, ["sweep"]).exit_code == 2


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_is_valid_and_expands(path):
    recipe = load_recipe(path)
    cells = expand_grid(sweep_settings(recipe))
    assert cells and set(recipe.sections) == {"prune", "train", "sweep"}
    assert "Progressive Skeletonization" in path.read_text()


def test_dense_reference_cells_and_the_prune_settings_of_a_cell(tmp_path):
    from force_cli.checkpoint import read_metadata
    from force_cli.sweep import Cell, prune_config

    path = tmp_path / "d.yaml"
    path.write_text(RECIPE.replace("  title: test\n", "  title: test\n  dense: true\n")
                    .replace("  save_every: 1\n", "  save_every: 1\n  val_fraction: 0.2\n")
                    .replace("seeds: [0, 1]", "seeds: [0]"))
    recipe = load_recipe(path)
    cells = expand_grid(sweep_settings(recipe))
    assert [c.key for c in cells] == ["dense-s0-seed0", "force-s0.9-seed0", "random-s0.9-seed0"]
    cfg = prune_config(recipe, Cell("force", 0.9, 0))
    assert cfg.val_fraction == 0.2 and cfg.allow_disconnected  # train's holdout; collapse is a result
    dense = prune_config(recipe, Cell("dense", 0.0, 0))
    assert (dense.method, dense.sparsity) == ("magnitude", 0.0)
    out = tmp_path / "out"
    run_sweep(recipe, out)
    records = {r["cell"]: r for r in read_results(out / "results.jsonl")}
    assert records["dense-s0-seed0"]["method"] == "dense" and records["dense-s0-seed0"]["achieved_sparsity"] == 0
    assert records["force-s0.9-seed0"]["disconnected"] is False
    assert 0 < records["force-s0.9-seed0"]["effective_density"] <= 0.1 + 1e-9
    assert read_metadata(out / records["force-s0.9-seed0"]["pruned"])["pruning"]["val_fraction"] == 0.2


# --------------------------------------------------------------------------------------------
# --jobs: cells in worker processes
# --------------------------------------------------------------------------------------------

TIMINGS = {"prune_seconds", "train_seconds"}


def records_by_cell(out):
    return {r["cell"]: {k: v for k, v in r.items() if k not in TIMINGS} for r in read_results(out / "results.jsonl")}


def test_workers_take_the_visible_gpus_in_turn(monkeypatch):
    from force_cli.sweep import pool as sweep_pool

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert sweep_pool.worker_gpus(3) == ["3", "5", "3"]  # the user's choice of GPUs is kept
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert sweep_pool.worker_gpus(2) == [None, None]  # none visible: nothing to pin
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(sweep_pool.torch.cuda, "device_count", lambda: 2)
    assert sweep_pool.worker_gpus(4) == ["0", "1", "0", "1"]
    monkeypatch.setattr(sweep_pool.torch.cuda, "device_count", lambda: 1)
    assert sweep_pool.worker_gpus(8) == ["0"] * 8  # more jobs than GPUs: they share it, nothing refused
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert sweep_pool.worker_gpus(3) == ["1", "1", "1"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(sweep_pool.torch.cuda, "device_count", lambda: 0)
    assert sweep_pool.worker_gpus(2) == [None, None]


def test_two_jobs_give_the_same_records_as_a_serial_run(recipe, tmp_path, uninterrupted):
    out = tmp_path / "parallel"
    started = []
    records = run_sweep(recipe, out, SweepHooks(on_cell_start=lambda cell, i, n: started.append(cell.key)), jobs=2)
    assert sorted(started) == sorted(uninterrupted) and len(records) == 4
    serial = records_by_cell(tmp_path / "straight")
    assert records_by_cell(out) == serial  # every field of every cell, timings aside
    assert len((out / "results.jsonl").read_text().splitlines()) == 4  # one whole line per cell


def test_two_jobs_resume_a_sweep_skipping_finished_cells_and_continuing_a_partial(recipe, tmp_path, uninterrupted):
    out = tmp_path / "resumed"

    def ctrl_c_after_first_epoch(record):
        os.kill(os.getpid(), signal.SIGINT)

    # a serial run stopped in the first cell's training leaves its partial checkpoint
    with pytest.raises(TrainingInterrupted):
        run_sweep(recipe, out, SweepHooks(train_callbacks=TrainCallbacks(on_epoch=ctrl_c_after_first_epoch)))
    # and a cell recorded as finished is not run again (its line is copied from the straight run)
    finished = read_results(tmp_path / "straight" / "results.jsonl")[1]
    append_result(out, finished)
    started = []
    run_sweep(recipe, out, SweepHooks(on_cell_start=lambda cell, i, n: started.append(cell.key)), jobs=2)
    assert sorted(started) == ["force-s0.9-seed0", "force-s0.9-seed1", "random-s0.9-seed1"]
    log = [json.loads(line) for line in (out / "cells" / "force-s0.9-seed0" / "train.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "epoch" in r] == [1, 2, 3]  # continued from its partial, not restarted
    assert not (out / "cells" / "force-s0.9-seed0" / "trained.partial.safetensors").exists()
    assert records_by_cell(out) == records_by_cell(tmp_path / "straight")


def test_ctrl_c_stops_every_worker_and_keeps_the_finished_cells(tmp_path):
    """Ctrl-C in a terminal reaches the whole process group: the parent stops its workers, records
    what finished, says how to continue; the same command then completes the sweep."""
    import subprocess
    import sys
    import time

    path = tmp_path / "slow.yaml"
    path.write_text(RECIPE.replace("epochs: 3", "epochs: 20").replace("milestones: [2]", "milestones: [10]")
                    .replace("methods: [force, random]", "methods: [random]"))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "force_cli", "sweep", str(path), "--out", str(out), "--jobs", "2"]
    with open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen(command, env=env, stderr=err, stdout=subprocess.DEVNULL, start_new_session=True)
        cells = [out / "cells" / f"random-s0.9-seed{s}" for s in range(2)]
        deadline = time.monotonic() + 240  # a bound on a hang only; no timing is asserted
        while not any((c / "trained.partial.safetensors").exists() for c in cells) and time.monotonic() < deadline:
            time.sleep(0.05)  # until a worker has saved its first epoch
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: parent and workers
        assert proc.wait(timeout=240) == 130
    message = (tmp_path / "stderr").read_text()
    assert "run the same command again to continue" in message and "Traceback" not in message
    assert not (out / ".force.lock").exists()  # released only once the workers had ended
    finished = records_by_cell(out)  # a cell may finish between the first partial and the signal
    assert any((c / "trained.partial.safetensors").exists() or c.name in finished for c in cells)
    run_sweep(load_recipe(path), out)  # what running the same command again does (in-process: faster)
    assert sorted(records_by_cell(out)) == [c.name for c in cells]
    assert not any((c / "trained.partial.safetensors").exists() for c in cells)


def test_a_cell_failing_in_a_worker_stops_the_sweep_with_its_own_error(tmp_path):
    from force_cli.errors import TrainingDiverged

    path = tmp_path / "diverges.yaml"
    path.write_text(RECIPE.replace("  epochs: 3\n", "  epochs: 3\n  lr: 1.0e+8\n").replace("methods: [force, random]",
                                                                                        "methods: [random]"))
    with pytest.raises(TrainingDiverged, match="lower learning rate"):  # the worker's exception, not a pickling error
        run_sweep(load_recipe(path), tmp_path / "out", jobs=2)
    assert read_results(tmp_path / "out" / "results.jsonl") == []


ABLATED = RECIPE.replace("  seeds: [0, 1]\n", "  seeds: [0]\n  ablations: [shuffle-within-layers, reinit]\n"
                         "  ablated_methods: [force]\n")


def test_ablations_run_beside_their_method_and_report_next_to_it(tmp_path):
    from force_cli.checkpoint import load_checkpoint, read_metadata
    from force_cli.sweep import summarise

    path = tmp_path / "r.yaml"
    path.write_text(ABLATED)
    recipe = load_recipe(path)
    assert [c.key for c in expand_grid(sweep_settings(recipe))] == [
        "force-s0.9-seed0", "force+shuffle-within-layers-s0.9-seed0", "force+reinit-s0.9-seed0", "random-s0.9-seed0"]
    out = tmp_path / "out"
    records = {r["cell"]: r for r in run_sweep(recipe, out)}
    shuffled = records["force+shuffle-within-layers-s0.9-seed0"]
    assert shuffled["method"] == "force+shuffle-within-layers"
    assert shuffled["base_method"] == "force" and shuffled["ablation"] == "shuffle-within-layers"
    original = load_checkpoint(out / records["force-s0.9-seed0"]["pruned"])
    ablated = out / shuffled["pruned"]
    assert read_metadata(ablated)["ablation"]["kind"] == "shuffle-within-layers"
    source = load_checkpoint(ablated.parent / "source.safetensors")  # the cell's own copy of force's mask
    for name, mask in original.masks.items():
        assert torch.equal(source.masks[name], mask)
        assert int(load_checkpoint(ablated).masks[name].sum()) == int(mask.sum())
    rows = summarise(list(reversed(read_results(out / "results.jsonl"))))  # finished in another order
    assert [r.method for r in rows] == ["random", "force", "force+reinit", "force+shuffle-within-layers"]


def test_an_unknown_ablation_or_ablated_method_is_refused(tmp_path):
    from force_cli.errors import ConfigError, UnknownNameError

    for text, error in (("shuffle", UnknownNameError), ("reinit]\n  ablated_methods: [snip", ConfigError)):
        path = tmp_path / "r.yaml"
        path.write_text(RECIPE + f"  ablations: [{text}]\n")
        with pytest.raises(error):
            expand_grid(sweep_settings(load_recipe(path)))


def test_a_method_may_carry_its_own_budget(tmp_path):
    from force_cli.sweep import Cell, prune_config

    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace("methods: [force, random]", "methods: [random, random@erk]")
                    .replace("seeds: [0, 1]", "seeds: [0]\n  ablations: [reinit]\n  ablated_methods: [random@erk]"))
    recipe = load_recipe(path)
    cells = expand_grid(sweep_settings(recipe))
    assert [c.key for c in cells] == ["random-s0.9-seed0", "random@erk-s0.9-seed0", "random@erk+reinit-s0.9-seed0"]
    assert prune_config(recipe, cells[1]).budget == "erk" and prune_config(recipe, cells[0]).budget == "global"
    assert cells[2] == Cell("random", 0.9, 0, "reinit", "erk")
    path.write_text(RECIPE.replace("methods: [force, random]", "methods: [random@erdos]"))
    from force_cli.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="budget"):
        expand_grid(sweep_settings(load_recipe(path)))
