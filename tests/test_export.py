"""`force export` round trips: dense <-> compact, plain state_dict, torch.nn.utils.prune layout."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from force_cli.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from force_cli.cli import app
from force_cli.models import build_model
from force_cli.pruning.masks import prunable_weights
from force_cli.restore import build_from_metadata, model_from_checkpoint

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory):
    """A LeNet-5 checkpoint on 28x28 (convs + linears), random 95 % sparse masks, a few kept weights per layer."""
    path = tmp_path_factory.mktemp("export") / "lenet5.safetensors"
    torch.manual_seed(0)
    args = dict(num_classes=10, in_channels=1, image_size=28, imagenet_style=False)
    model = build_model("lenet5", **args)
    g = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(w.shape, generator=g) < 0.05 for n, w in prunable_weights(model).items()}
    save_checkpoint(path, model.state_dict(), masks,
                    {"stage": "init", "model": "lenet5", "model_args": args, "dataset": "mnist", "seed": 0})
    return path


def _tensor_bytes(path):
    """Every tensor (name, dtype, shape, sha256 of its raw bytes) and the metadata."""
    with safe_open(str(path), "pt") as f:
        return {k: (str(t.dtype), tuple(t.shape), hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes())
                    .hexdigest()) for k in f.keys() for t in [f.get_tensor(k)]}, f.metadata()


def test_dense_to_compact_to_dense_is_bit_identical(dense_ckpt, tmp_path):
    compact, back = tmp_path / "c.safetensors", tmp_path / "d.safetensors"
    assert invoke("export", dense_ckpt, "--to", "compact", "-o", compact).exit_code == 0
    result = invoke("export", compact, "--to", "dense", "-o", back)
    assert result.exit_code == 0 and result.stdout.strip() == str(back)
    # every tensor byte and every metadata string (the header's metadata order is safetensors' hash-map order)
    assert _tensor_bytes(back) == _tensor_bytes(dense_ckpt)
    assert back.stat().st_size == dense_ckpt.stat().st_size
    assert compact.stat().st_size < dense_ckpt.stat().st_size / 3
    assert read_metadata(compact)["format"] == "force-ckpt-compact/1"


def test_state_dict_export_loads_strictly_with_pruned_weights_zero(dense_ckpt, tmp_path):
    out = tmp_path / "sd.safetensors"
    assert invoke("export", dense_ckpt, "--to", "state-dict", "-o", out).exit_code == 0
    ckpt = load_checkpoint(dense_ckpt)
    model = build_from_metadata(ckpt.metadata)
    state = load_file(str(out))
    assert not any(":" in k for k in state)
    model.load_state_dict(state, strict=True)  # raises on a missing or unexpected key
    for name, mask in ckpt.masks.items():
        weight = model.get_parameter(name)
        assert torch.all(weight[~mask] == 0) and torch.equal(weight[mask], ckpt.state_dict[name][mask])


def test_torch_prune_export_gives_the_force_models_outputs(dense_ckpt, tmp_path):
    out = tmp_path / "tp.safetensors"
    assert invoke("export", dense_ckpt, "--to", "torch-prune", "-o", out).exit_code == 0
    ckpt = load_checkpoint(dense_ckpt)
    reference = model_from_checkpoint(ckpt).eval()

    # the README's snippet: prune the architecture with custom_from_mask, then a strict load
    state = load_file(str(out))
    model = build_from_metadata(read_metadata(dense_ckpt))
    for name, module in model.named_modules():
        if f"{name}.weight_mask" in state:
            torch_prune.custom_from_mask(module, "weight", state[f"{name}.weight_mask"])
    model.load_state_dict(state, strict=True)
    model.eval()
    assert {k for k in state if k.endswith("_orig")} == {k + "_orig" for k in ckpt.masks}

    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(x)
        assert torch.equal(model(x), expected)
        # and independently: the same network with the masks multiplied in by hand
        for name, mask in ckpt.masks.items():
            reference.get_parameter(name).mul_(mask)
        assert torch.equal(reference(x), expected)


def test_compact_checkpoint_reads_everywhere_the_dense_one_does(dense_ckpt, tmp_path):
    compact = tmp_path / "c.safetensors"
    assert invoke("export", dense_ckpt, "--to", "compact", "-o", compact).exit_code == 0
    a = invoke("inspect", dense_ckpt, "--json")
    b = invoke("inspect", compact, "--json")
    assert a.exit_code == 0 and b.exit_code == 0, b.output
    ra, rb = json.loads(a.stdout), json.loads(b.stdout)
    assert ra["totals"] == rb["totals"] and ra["layers"] == rb["layers"]


@pytest.mark.parametrize("args, fragment", [
    (["--to", "onnx"], "unknown export format 'onnx'"),
])
def test_bad_export_is_one_line_and_writes_nothing(dense_ckpt, tmp_path, args, fragment):
    out = tmp_path / "x.safetensors"
    result = invoke("export", dense_ckpt, *args, "-o", out)
    assert result.exit_code == 2 and fragment in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not out.exists()


def test_export_refuses_to_replace_a_file_or_its_input(dense_ckpt, tmp_path):
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"keep me")
    result = invoke("export", dense_ckpt, "--to", "compact", "-o", out)
    assert result.exit_code == 2 and "--overwrite" in result.stderr and out.read_bytes() == b"keep me"
    result = invoke("export", dense_ckpt, "--to", "compact", "-o", dense_ckpt, "--overwrite")
    assert result.exit_code == 2 and "input" in result.stderr
    assert load_checkpoint(dense_ckpt).metadata["format"] == "force-ckpt/1"
