"""A command line that answers at once: --help, --version, and the errors that need no tensor do
not import torch, and the torch-free name lists the help texts use are the registries' own.

Importing torch takes seconds; `force --help` in a shell or a tab completion should not wait for
it. Each call runs in a fresh interpreter (torch is already loaded in this one).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from typer.testing import CliRunner

from force_cli.cli import app
from force_cli.cli.options import saliency_temperature_help, steps_help, train_default
from force_cli.models import INIT_SCHEMES, MODELS
from force_cli.models.names import DEFAULT_INIT, INIT_NAMES, MODEL_NAMES
from force_cli.pruning.criteria import score_function
from force_cli.pruning.methods import METHODS, Method, register

# Each call runs the real entry point in one interpreter, which then reports whether torch was
# imported after it; the first call that imports torch is named.
_PROBE = textwrap.dedent("""
    import json, os, sys
    from force_cli.__main__ import main
    results = []
    for args, env in json.loads(sys.argv[1]):
        os.environ.update(env)
        sys.argv = ["force"] + args
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code
        for name in env:
            del os.environ[name]
        results.append([args, code, "torch" in sys.modules])
    sys.stdout.flush()
    sys.stderr.write("PROBE " + json.dumps(results) + "\\n")
""")


def run_calls(calls) -> list:
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(calls)], capture_output=True, text=True,
                          timeout=300)
    report = [line for line in proc.stderr.splitlines() if line.startswith("PROBE ")]
    assert report, proc.stderr
    return json.loads(report[-1][len("PROBE "):])


def test_help_version_and_errors_that_need_no_tensor_do_not_import_torch(tmp_path):
    missing = str(tmp_path / "missing.safetensors")
    out = str(tmp_path / "out.safetensors")
    calls = [
        (["--help"], 0), (["--version"], 0), ([], 2),
        (["prune", "--help"], 0), (["train", "--help"], 0), (["eval", "--help"], 0),
        (["inspect", "--help"], 0), (["export", "--help"], 0), (["sweep", "--help"], 0),
        (["shrink", "--help"], 0), (["bench", "--help"], 0),
        (["prune", "--model", "nope", "--sparsity", "0.5"], 2),
        (["prune", "--model", "lenet300", "--dataset", "nope", "--sparsity", "0.5"], 2),
        (["prune", "--model", "lenet300", "--method", "nope", "--sparsity", "0.5"], 2),
        (["prune", "--model", "lenet300", "--sparsity", "1.5"], 2),
        (["prune", "--model", "lenet300", "--sparsity", "0.5", "--threads", "0"], 2),
        (["prune", "--no-such-option"], 2),
        (["inspect", missing], 2), (["inspect", missing, "--threads", "2"], 2), (["eval", missing], 2),
        (["train", missing], 2), (["train", "--resume", missing], 2),
        (["export", missing, "--to", "dense", "-o", out], 2), (["export", missing, "--to", "nope", "-o", out], 2),
        (["export", missing, "--to", "sparse", "-o", out], 2), (["shrink", missing, "-o", out], 2),
        (["bench", missing], 2), (["bench", missing, "--repeats", "0"], 2),
        (["ablate", "--help"], 0), (["ablate", missing, "--reinit", "-o", out], 2),
        (["ablate", missing, "-o", out], 2), (["ablate", missing, "--reinit", "--seed", "-1", "-o", out], 2),
        (["prune", "--model", "lenet300", "--sparsity", "0.5", "--budget", "nope"], 2),
        (["prune", "--model", "lenet300", "--sparsity", "0.5", "--ties", "nope"], 2),
    ]
    results = run_calls([[args, {}] for args, _ in calls])
    for (args, code), (_, got_code, torch_loaded) in zip(calls, results, strict=True):
        assert got_code == code, args
        assert not torch_loaded, f"force {' '.join(args)} imported torch"


def test_shell_completion_does_not_import_torch():
    (args, _, torch_loaded), = run_calls([[[], {"_FORCE_COMPLETE": "bash_complete", "COMP_WORDS": "force pr",
                                                  "COMP_CWORD": "1"}]])
    assert not torch_loaded


def test_a_command_that_does_work_still_loads_torch(tmp_path):
    """The probe can see torch: a real prune imports it."""
    out = str(tmp_path / "p.safetensors")
    (_, code, torch_loaded), = run_calls([[["prune", "--model", "lenet300", "--dataset", "synthetic", "--method",
                                            "magnitude", "--sparsity", "0.5", "-o", out, "-q"], {}]])
    assert code == 0 and torch_loaded


def test_torch_free_name_lists_are_the_registries_names():
    assert MODEL_NAMES == tuple(MODELS)
    assert INIT_NAMES == tuple(INIT_SCHEMES) and DEFAULT_INIT in INIT_SCHEMES


def test_every_built_in_method_names_a_score_function_of_criteria():
    for method in METHODS.values():
        assert callable(score_function(method)), method.name


def test_version_reads_torchs_own_version_without_importing_it(monkeypatch):
    from force_cli.cli.app import torch_version

    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh `force --version`
    assert torch_version() == torch.__version__


def test_help_texts_follow_the_registries(monkeypatch):
    assert steps_help() == "Pruning steps of iterative methods (default: 60; synflow 100; ntk-sap 20)."
    assert "(default: the method's, 200 for grasp, else 1)" in saliency_temperature_help()
    monkeypatch.setitem(METHODS, "slow-test", Method("slow-test", "magnitude", "a test method", iterative=True,
                                                     default_steps=7))
    assert steps_help() == "Pruning steps of iterative methods (default: 60; synflow 100; ntk-sap 20; slow-test 7)."


def test_a_training_default_that_differs_by_dataset_is_not_shown_as_one(monkeypatch):
    import dataclasses

    from force_cli.data.catalog import DATASETS

    assert train_default("optimizer") == "sgd" and train_default("momentum") == 0.9
    digits = DATASETS["digits"]
    monkeypatch.setitem(DATASETS, "digits", dataclasses.replace(digits, train=digits.train.but(momentum=0.5)))
    with pytest.raises(ValueError):
        train_default("momentum")


def test_help_lists_a_newly_registered_method():
    """The command's help is built from the registry when the command is defined: a method
    registered before that (as a plug-in would be) is listed by `force prune --help`."""
    code = ("from force_cli.pruning.methods import Method, register; "
            "register(Method('plug-in-test', 'magnitude', 'test', needs_data=False)); "
            "from force_cli.cli import app; from typer.testing import CliRunner; "
            "print(CliRunner().invoke(app, ['prune', '--help'], env={'COLUMNS': '400'}).stdout)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "prospr, prospr-full, plug-in-test." in out


def test_export_help_lists_the_formats():
    from force_cli.checkpoint.export import FORMATS

    result = CliRunner().invoke(app, ["export", "--help"], env={"COLUMNS": "400"})
    assert "Format to write: compact, dense, state-dict, torch-prune or sparse (below)." in result.stdout
    assert all(name in result.stdout for name in FORMATS)
