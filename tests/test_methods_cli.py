"""The CLI surface of issue 20: `prune --budget/--ties`, the new methods, recipes, and `force ablate`."""

from __future__ import annotations

from typer.testing import CliRunner

from force_cli.checkpoint import load_checkpoint, read_metadata
from force_cli.cli import app
from force_cli.pruning.budgets import layer_counts

runner = CliRunner()
DIGITS = ["--model", "lenet300", "--dataset", "digits", "--batch-size", "64", "--quiet"]
SHAPES = {"fc1.weight": (300, 64), "fc2.weight": (100, 300), "fc3.weight": (10, 100)}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_prune_with_a_budget_and_a_tie_rule_records_both(tmp_path):
    out = tmp_path / "erk.safetensors"
    result = run("prune", *DIGITS, "--method", "random", "--sparsity", "0.98", "--budget", "erk", "--ties", "keep",
                 "-o", out)
    assert result.exit_code == 0, result.stderr
    ckpt = load_checkpoint(out)
    assert ckpt.metadata["pruning"]["budget"] == "erk" and ckpt.metadata["pruning"]["ties"] == "keep"
    assert {n: int(m.sum()) for n, m in ckpt.masks.items()} == layer_counts("erk", SHAPES, round(0.02 * 50200))


def test_a_recipe_sets_the_budget_and_a_flag_wins(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: lenet300\ndataset: digits\nprune:\n  method: random\n  sparsity: 0.9\n  budget: uniform\n")
    out = tmp_path / "u.safetensors"
    assert run("prune", "--recipe", recipe, "-o", out, "-q").exit_code == 0
    assert read_metadata(out)["pruning"]["budget"] == "uniform"
    out2 = tmp_path / "g.safetensors"
    assert run("prune", "--recipe", recipe, "--budget", "global", "-o", out2, "-q").exit_code == 0
    assert read_metadata(out2)["pruning"]["budget"] == "global"


def test_bad_budget_tie_rule_and_impossible_budget_are_one_line_errors(tmp_path):
    for extra, message in ((["--budget", "erdos"], "unknown budget 'erdos'"),
                           (["--ties", "some"], "unknown tie rule 'some'"),
                           (["--budget", "uniform-plus"], "use a sparsity of at most")):
        out = tmp_path / "x.safetensors"
        result = run("prune", *DIGITS, "--sparsity", "0.99", "--method", "random", *extra, "-o", out)
        assert result.exit_code == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not out.exists()


def test_the_new_methods_prune_from_the_command_line(tmp_path):
    for method, extra in (("ntk-sap", ["--steps", "2"]), ("prospr", [])):
        out = tmp_path / f"{method}.safetensors"
        result = run("prune", *DIGITS, "--sparsity", "0.95", "--method", method, *extra, "-o", out)
        assert result.exit_code == 0, result.stderr
        meta = read_metadata(out)
        assert meta["method"] == method
        assert meta["pruning"]["saliency_loss"] == ("cross-entropy" if method == "prospr" else None)


def test_ablate_writes_the_check_and_prints_its_path(tmp_path):
    source = tmp_path / "p.safetensors"
    assert run("prune", *DIGITS, "--sparsity", "0.95", "--steps", "3", "-o", source).exit_code == 0
    out = tmp_path / "shuffled.safetensors"
    result = run("ablate", source, "--shuffle-within-layers", "--seed", "5", "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert read_metadata(out)["ablation"] == {"kind": "shuffle-within-layers", "source": str(source),
                                              "source_method": "force", "seed": 5}


def test_ablate_needs_exactly_one_check_and_refuses_bad_input_in_one_line(tmp_path):
    source = tmp_path / "p.safetensors"
    assert run("prune", *DIGITS, "--method", "magnitude", "--sparsity", "0.9", "-o", source).exit_code == 0
    out = tmp_path / "o.safetensors"
    for extra, message in (([], "exactly one of"), (["--reinit", "--invert-scores"], "exactly one of"),
                           (["--reinit", "--seed", "0"], "same weights"), (["--reinit", "--seed", "-1"], "at least 0")):
        result = run("ablate", source, *extra, "-o", out)
        assert result.exit_code == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()
    result = run("ablate", tmp_path / "missing.safetensors", "--reinit", "-o", out)
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_help_names_every_budget_tie_rule_check_and_new_method():
    prune_help = run("prune", "--help").stdout
    for word in ("--budget", "uniform-plus", "erk", "--ties", "ntk-sap", "prospr", "--budget erk"):
        assert word in prune_help, word
    ablate_help = run("ablate", "--help").stdout
    for word in ("--shuffle-within-layers", "--reinit", "--invert-scores", "Examples"):
        assert word in ablate_help, word
