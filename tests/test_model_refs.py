"""--model torchvision:NAME and package.module:factory: the CLI pipeline, refusals, the trust opt-in."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from force_cli.checkpoint import load_checkpoint, read_metadata
from force_cli.cli import app
from force_cli.errors import CheckpointError
from force_cli.models import MODELS, build_model
from force_cli.models.refs import trusted_model_code
from force_cli.restore import model_from_checkpoint
from tests.custom_models import tiny_mlp

runner = CliRunner()
TINY = "tests.custom_models:tiny_mlp"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code=2):
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output, result.stderr
    return lines[0]


def test_an_import_path_model_goes_through_prune_train_eval_inspect(tmp_path):
    pruned, trained = tmp_path / "p.safetensors", tmp_path / "t.safetensors"
    result = invoke("prune", "-m", TINY, "-d", "digits", "-s", "0.9", "--method", "snip", "--compact", "-o", pruned, "-q")
    assert result.exit_code == 0, result.output
    meta = read_metadata(pruned)
    assert meta["model"] == TINY and meta["format"] == "force-ckpt-compact/1"
    assert meta["model_args"] == {"num_classes": 10, "in_channels": 1, "image_size": 8, "imagenet_style": False}

    # the recorded reference and arguments rebuild the factory's architecture, with the file's weights
    ckpt = load_checkpoint(pruned)
    with trusted_model_code():
        model = model_from_checkpoint(ckpt)
    expected = tiny_mlp(10, 1, 8)
    assert [(k, v.shape) for k, v in model.state_dict().items()] == [(k, v.shape) for k, v in expected.state_dict().items()]
    assert sum(int(m.sum()) for m in ckpt.masks.values()) == round(0.1 * (64 * 32 + 32 * 10))

    for command in (["inspect", pruned], ["train", pruned, "-o", trained, "--epochs", "1", "-q"], ["eval", trained]):
        one_line_error(invoke(*command))  # an import path is never imported without the opt-in
    assert not trained.exists()
    result = invoke("train", pruned, "-o", trained, "--epochs", "2", "--compact", "--trust-model-code", "-q")
    assert result.exit_code == 0, result.output
    assert read_metadata(trained)["format"] == "force-ckpt-compact/1" and read_metadata(trained)["stage"] == "trained"
    trained_ckpt = load_checkpoint(trained)
    for name, mask in trained_ckpt.masks.items():  # training kept the masks
        assert torch.equal(mask, ckpt.masks[name]) and torch.all(trained_ckpt.state_dict[name][~mask] == 0)

    result = invoke("eval", trained, "--json", "--trust-model-code")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model"] == TINY and report["samples"] > 0 and report["top1"] > 0.2  # chance is 0.1
    result = invoke("inspect", trained, "--json", "--trust-model-code")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["totals"]["kept"] == sum(int(m.sum()) for m in ckpt.masks.values())


def test_a_factory_gets_only_the_arguments_it_accepts():
    model = build_model("tests.custom_models:small_convnet", num_classes=7, in_channels=1, image_size=8, init=None)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 7)


def test_torchvision_models_are_built_with_weights_none_and_need_no_opt_in(tmp_path):
    out = tmp_path / "r.safetensors"
    result = invoke("prune", "-m", "torchvision:resnet18", "-d", "synthetic", "-s", "0.99", "--method", "random",
                    "-o", out, "-q")
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out)
    model = model_from_checkpoint(ckpt)  # no trusted_model_code(): torchvision names no user code
    assert type(model).__name__ == "ResNet" and model.fc.out_features == 10
    assert "layer4.1.conv2.weight" in ckpt.masks


@pytest.mark.parametrize("model, fragment", [
    ("tests.custom_models:not_a_module", "returned a list, not a torch.nn.Module"),
    ("tests.custom_models:NOT_CALLABLE", "is not callable"),
    ("tests.custom_models:missing", "has no 'missing'"),
    ("no_such_package.models:net", "cannot import 'no_such_package.models'"),
    ("tests.custom_models:fixed_outputs", "expected (2, 10) logits"),
    ("not a:reference", "is not a reference"),
    ("torchvision:no_such_net", "not a torchvision classification model"),
    ("torchvision:resnet18", "3-channel"),  # digits has one channel
])
def test_bad_references_are_refused_with_one_line_and_no_file(tmp_path, model, fragment):
    out = tmp_path / "x.safetensors"
    line = one_line_error(invoke("prune", "-m", model, "-d", "digits", "-s", "0.9", "--method", "random", "-o", out))
    assert fragment in line and not out.exists()


def test_a_torchvision_that_cannot_be_imported_is_one_line_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision -> ImportError
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    out = tmp_path / "x.safetensors"
    line = one_line_error(invoke("prune", "-m", "torchvision:resnet18", "-d", "synthetic", "-s", "0.9",
                                 "--method", "random", "-o", out))
    assert "torchvision cannot be imported" in line and "pip install torchvision" in line and not out.exists()


def test_registry_lists_only_its_names_but_accepts_references():
    assert TINY in MODELS and "torchvision:resnet50" in MODELS and "nosuch" not in MODELS
    assert all(":" not in name for name in MODELS)


def test_trust_can_name_one_reference(tmp_path):
    out = tmp_path / "p.safetensors"
    assert invoke("prune", "-m", TINY, "-d", "digits", "-s", "0.5", "--method", "random", "-o", out).exit_code == 0
    ckpt = load_checkpoint(out)
    with trusted_model_code(only=TINY):
        model_from_checkpoint(ckpt)
    with trusted_model_code(only="tests.custom_models:small_convnet"), pytest.raises(CheckpointError):
        model_from_checkpoint(ckpt)


def test_untrusted_checkpoint_is_refused_before_its_module_is_imported(tmp_path, monkeypatch):
    out = tmp_path / "p.safetensors"
    assert invoke("prune", "-m", TINY, "-d", "digits", "-s", "0.5", "--method", "random", "-o", out).exit_code == 0
    ckpt = load_checkpoint(out)
    ckpt.metadata["model"] = "tests.never_imported:net"
    imported = []
    monkeypatch.setattr("importlib.import_module", lambda name, *a: imported.append(name))
    with pytest.raises(CheckpointError, match="--trust-model-code"):
        model_from_checkpoint(ckpt)
    assert imported == []


def test_sweep_runs_an_import_path_model_its_recipe_names(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {TINY}\ndataset: digits\ntrain:\n  epochs: 1\n"
                      "sweep:\n  methods: [random]\n  sparsities: [0.9]\n  seeds: [0]\n")
    result = invoke("sweep", recipe, "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "results.jsonl").read_text().splitlines()[0])
    assert record["test_acc"] > 0.1


def test_a_worker_adopts_its_parents_trust_and_no_more():
    """The public trust API a sweep worker uses: what current_trust() hands over, adopt_trust()
    takes on; run in a copied context so that nothing leaks into other tests."""
    import contextvars

    from force_cli.errors import CheckpointError
    from force_cli.models.trust import adopt_trust, check_trusted, current_trust, trusted_model_code

    with trusted_model_code(only="pkg.mod:net"):
        handed = current_trust()
    assert handed == frozenset({"pkg.mod:net"}) and current_trust() is False

    def worker():
        adopt_trust(handed)
        check_trusted("pkg.mod:net")  # the recipe's model: allowed
        with pytest.raises(CheckpointError):
            check_trusted("other.mod:net")
        with pytest.raises(TypeError):
            adopt_trust("yes")

    contextvars.copy_context().run(worker)
    with pytest.raises(CheckpointError):
        check_trusted("pkg.mod:net")  # this process's own setting is untouched
