"""`force shrink`, `force bench`, `force export --to sparse` and the shrunk file in `eval`/`inspect`."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from force_cli.checkpoint import save_checkpoint
from force_cli.cli import app
from force_cli.errors import ShrinkError
from force_cli.models import build_model
from force_cli.pruning.masks import prunable_weights
from force_cli.shrink import load_shrunk
from force_cli.shrink.rewrite import shrink_model

runner = CliRunner()
ARGS = dict(num_classes=10, in_channels=1, image_size=8, imagenet_style=False)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_failure(result, *fragments):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr and result.stdout == "", result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """LeNet-300-100 on digits (8x8), random 98 %-sparse masks, non-zero biases."""
    path = tmp_path_factory.mktemp("shrink") / "lenet.safetensors"
    torch.manual_seed(0)
    model = build_model("lenet300", **ARGS)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    masks = {n: torch.rand(w.shape, generator=g) < 0.02 for n, w in prunable_weights(model).items()}
    save_checkpoint(path, model.state_dict(), masks,
                    {"stage": "init", "model": "lenet300", "model_args": ARGS, "dataset": "digits", "seed": 0})
    return path, masks


def live_units(masks) -> tuple[int, int]:
    """By the definition, for LeNet-300-100: a hidden unit is live when it has a kept input from a
    varying unit (every input pixel varies) and a kept output to a unit that is used."""
    m1, m2, m3 = masks["fc1.weight"], masks["fc2.weight"], masks["fc3.weight"]
    varying1 = m1.any(1)
    varying2 = (m2 & varying1[None, :]).any(1)
    used2 = m3.any(0)
    used1 = (m2 & used2[:, None]).any(0)
    return int((varying1 & used1).sum()), int((varying2 & used2).sum())


def test_shrink_writes_the_live_widths_and_inspect_and_eval_take_the_file(lenet, tmp_path):
    path, masks = lenet
    out = tmp_path / "lenet-shrunk.safetensors"
    result = invoke("shrink", path, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out)
    report = json.loads(invoke("inspect", out, "--json").stdout)
    width1, width2 = live_units(masks)
    assert [row["width"] for row in report["layers"]] == [[300, width1], [100, width2], [10, 10]]
    assert width1 < 300 and width2 < 100
    assert "300 → " in invoke("inspect", out).stdout
    dense = json.loads(invoke("eval", path, "--json").stdout)
    shrunk = json.loads(invoke("eval", out, "--json").stdout)
    assert shrunk["top1"] == dense["top1"] and shrunk["samples"] == dense["samples"] == 360
    assert shrunk["loss"] == pytest.approx(dense["loss"], rel=1e-5)
    assert shrunk["density"] == pytest.approx(dense["density"])


def test_shrink_refuses_an_existing_output_and_a_missing_checkpoint(lenet, tmp_path):
    out = tmp_path / "exists.safetensors"
    out.write_bytes(b"keep me")
    assert_clean_failure(invoke("shrink", lenet[0], "-o", out), "already exists", "--overwrite")
    assert out.read_bytes() == b"keep me"
    assert_clean_failure(invoke("shrink", tmp_path / "missing.safetensors", "-o", tmp_path / "x.safetensors"),
                         "does not exist")


def test_a_model_with_an_unknown_operation_is_refused_naming_the_layer(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2))
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(model).items()}
    with pytest.raises(ShrinkError, match=r"layer '2' \(GELU\)"):
        shrink_model(model, masks, (1, 2, 2))
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten())
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(grouped).items()}
    with pytest.raises(ShrinkError, match=r"layer '0' \(Conv2d\): grouped"):
        shrink_model(grouped, masks, (4, 5, 5))
    # through the CLI, a module:factory model: one line, exit 2
    sys.path.insert(0, str(Path(__file__).parent.parent))
    ckpt = tmp_path / "gelu.safetensors"
    torch.manual_seed(0)
    from tests.custom_models import gelu_mlp

    net = gelu_mlp(10, 1, 8)
    save_checkpoint(ckpt, net.state_dict(), {n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(net).items()},
                    {"stage": "init", "model": "tests.custom_models:gelu_mlp", "model_args": ARGS, "dataset": "digits"})
    assert_clean_failure(invoke("shrink", ckpt, "-o", tmp_path / "g.safetensors", "--trust-model-code"),
                         "layer '2' (GELU)")


def test_bench_reports_networks_that_agree_with_dense(lenet):
    """dense, shrunk and csr, and onnxruntime where onnx and onnxruntime are installed (the dev
    install has them); otherwise the report says why it is left out."""
    from force_cli.shrink.onnx_runtime import missing_packages

    result = invoke("bench", lenet[0], "--json", "--batch-size", "16", "--repeats", "2", "--quiet")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    onnx = not missing_packages()
    assert set(report["networks"]) == {"dense", "shrunk", "csr"} | ({"onnxruntime"} if onnx else set())
    assert report["batch_sizes"] == [1, 16]
    assert ("onnxruntime" in report["onnxruntime"]) if onnx else ("not installed" in report["onnxruntime"]["skipped"])
    for name, entry in report["networks"].items():
        for batch in entry["batches"].values():
            assert batch["max_rel_diff"] <= 1e-5 and batch["median_s"] > 0
            assert batch["peak_bytes"] is None if name == "onnxruntime" else batch["peak_bytes"] >= 0
    files = {name: entry["file_bytes"] for name, entry in report["networks"].items()}
    assert all(files[name] < files["dense"] / 5 for name in files if name != "dense")
    assert [row["layer"] for row in report["layers"]] == ["fc1", "fc2", "fc3"]
    assert all(0.0 <= row["break_even_density"] <= 1.0 for row in report["layers"])
    for row in report["layers"]:  # a BSR time wherever a block side divides the shrunk matrix
        rows, cols = row["shrunk_shape"][0], math.prod(row["shrunk_shape"][1:])
        side = 4 if rows % 4 == cols % 4 == 0 else 2 if rows % 2 == cols % 2 == 0 else None
        assert row["bsr_block"] == side and (row["bsr_s"] is None) == (side is None), row
    assert "shrunk" in invoke("bench", lenet[0], "--batch-size", "4", "--repeats", "1", "--no-layers").stdout


def test_export_sparse_computes_what_the_masked_network_computes(lenet, tmp_path):
    path, masks = lenet
    out = tmp_path / "sparse.safetensors"
    result = invoke("export", path, "--to", "sparse", "-o", out, "--batch-size", "16", "--repeats", "2")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out)
    net, metadata = load_shrunk(out)
    choices = metadata["sparse_choices"]
    assert choices["written"] in ("dense", "shrunk", "shrunk+csr")
    assert [r["layer"] for r in choices["layers"]] == ["fc1", "fc2", "fc3"]
    model = build_model("lenet300", init=None, **ARGS)
    with safe_open(str(path), "pt") as f:
        model.load_state_dict({k: f.get_tensor(k) for k in f.keys() if ":" not in k})
    x = torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        expected = model.eval()(x)
        assert torch.allclose(net(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    shrunk = tmp_path / "shrunk.safetensors"
    assert invoke("shrink", path, "-o", shrunk).exit_code == 0
    assert_clean_failure(invoke("export", shrunk, "--to", "compact", "-o", tmp_path / "c.safetensors"),
                         "shrunk network", "--to sparse")
    assert invoke("export", shrunk, "--to", "sparse", "-o", tmp_path / "s2.safetensors", "--repeats", "1",
                  "--batch-size", "4").exit_code == 0


def test_a_shrunk_file_naming_a_missing_tensor_is_refused(lenet, tmp_path):
    good = tmp_path / "good.safetensors"
    assert invoke("shrink", lenet[0], "-o", good).exit_code == 0
    with safe_open(str(good), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    program = json.loads(meta["program"])
    program["ops"][0]["weight"] = "nowhere"
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta | {"program": json.dumps(program)})
    assert_clean_failure(invoke("eval", bad), "'nowhere'", "corrupt")
    assert_clean_failure(invoke("inspect", bad), "'nowhere'")


def readme_loader() -> str:
    """The loader the README shows under 'Does sparsity make it faster?'."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text[text.index("## Does sparsity make it faster?"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_loader_runs_shrunk_and_sparse_files_without_force_cli(lenet, tmp_path):
    """The README's code, run with force_cli made unimportable, agrees with force's own module."""
    shrunk, sparse = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert invoke("shrink", lenet[0], "-o", shrunk).exit_code == 0
    assert invoke("export", lenet[0], "--to", "sparse", "-o", sparse, "--repeats", "1", "--batch-size", "4").exit_code == 0
    from force_cli.shrink.sparse import to_csr, mixing_indices

    net, _ = load_shrunk(shrunk)
    program, tensors = to_csr(net.program, net.tensors(), mixing_indices(net.program))  # every layer CSR
    forced = tmp_path / "all-csr.safetensors"
    with safe_open(str(shrunk), "pt") as f:
        meta = f.metadata()
    save_file(tensors, str(forced), metadata=meta | {"program": json.dumps(program)})
    code = readme_loader()
    hidden = {name: sys.modules.pop(name) for name in list(sys.modules) if name.split(".")[0] == "force_cli"}
    sys.modules["force_cli"] = None  # `import force_cli` now raises
    try:
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)
        x = torch.randn(5, 1, 8, 8)
        outputs = [namespace["load"](str(p))(x) for p in (shrunk, sparse, forced)]
    finally:
        del sys.modules["force_cli"]
        sys.modules.update(hidden)
    with torch.no_grad():
        expected = net(x)
    for out in outputs:
        assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_break_even_density_is_where_csr_time_crosses_dense_time():
    from force_cli.shrink.bench import break_even

    probes = [(0.001, 0.1), (0.01, 0.5), (0.05, 2.0)]
    # between 0.01 (0.5 s) and 0.05 (2 s), 1 s is half-way in log time: sqrt(0.01 * 0.05)
    assert break_even(1.0, probes) == pytest.approx((0.01 * 0.05) ** 0.5)
    assert break_even(0.05, probes) == 0.0  # CSR never faster
    assert break_even(3.0, probes) == 1.0  # always faster


def test_bench_refuses_bad_settings_and_a_shrunk_file_in_one_line(lenet, tmp_path):
    assert_clean_failure(invoke("bench", lenet[0], "--batch-size", "0"), "--batch-size must be at least 1")
    assert_clean_failure(invoke("bench", lenet[0], "--repeats", "0"), "--repeats must be at least 1")
    shrunk = tmp_path / "s.safetensors"
    assert invoke("shrink", lenet[0], "-o", shrunk).exit_code == 0
    assert_clean_failure(invoke("bench", shrunk), "shrunk network", "checkpoint it was made from")
    assert_clean_failure(invoke("export", lenet[0], "--to", "sparse", "-o", tmp_path / "x.safetensors",
                                "--batch-size", "-1"), "--batch-size must be at least 1")
    assert not (tmp_path / "x.safetensors").exists()


def test_the_readme_loader_runs_every_op_kind_dense_and_csr(tmp_path):
    """Convolutions (dense and CSR), a per-position bias, concatenation, channel padding, a
    standalone batch norm, pools: the README's loader against the masked network itself."""
    from force_cli.shrink import save_shrunk
    from force_cli.shrink.sparse import mixing_indices, to_csr
    from tests.test_shrink import Concatenation, masked_output, randomise_constants_

    torch.manual_seed(0)
    net = Concatenation()
    randomise_constants_(net, 4)
    masks = {n: torch.rand(w.shape) < 0.4 for n, w in prunable_weights(net).items()}
    masks["a.weight"][1] = False  # a constant channel, read by the padded conv c: a bias map
    shrunk = shrink_model(net, masks, (2, 4, 4))
    assert any(op.get("bias_map") for op in shrunk.program["ops"])
    dense_file, csr_file = tmp_path / "dense.safetensors", tmp_path / "csr.safetensors"
    save_shrunk(dense_file, shrunk.program, shrunk.tensors, {})
    save_shrunk(csr_file, *to_csr(shrunk.program, shrunk.tensors, mixing_indices(shrunk.program)), {})
    x = torch.randn(3, 2, 4, 4)
    expected = masked_output(net, masks, x)
    namespace: dict = {}
    exec(compile(readme_loader(), "README.md", "exec"), namespace)
    for path in (dense_file, csr_file):
        out = namespace["load"](str(path))(x)
        assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
        with torch.no_grad():
            assert torch.allclose(load_shrunk(path)[0](x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
