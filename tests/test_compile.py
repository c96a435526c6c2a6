"""`--compile`: which batches go through the compiled model, what a compile failure or a machine
without a compiler does, and that a compiled run trains to the eager run's weights."""

from __future__ import annotations

import functools

import pytest
import torch

from force_cli.config import TrainSettings
from force_cli.training import compiled
from force_cli.training.loop import TrainCallbacks, Trainer
from force_cli.training.settings import complete_settings
from tests.helpers import assert_same_weights, strip_times, tiny_convnet
from tests.test_training import array_splits, dropout_net, random_masks, run_stopped_and_resumed

CPU = torch.device("cpu")


class CountingBackend:
    """A torch.compile backend that runs dynamo's graph as it is (the eager kernels, so the
    numbers are the eager run's) and counts the graphs it was given; ``fail`` makes the graph it
    returns raise after running, i.e. after the batch-norm statistics and the RNG have moved."""

    def __init__(self, fail: str | None = None):
        self.graphs, self.fail = 0, fail

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        if self.fail == "compiling":
            raise RuntimeError("no kernel for this graph")

        def run(*args):
            out = gm.forward(*args)
            if self.fail == "running":
                raise RuntimeError("the compiled kernel crashed")
            return out

        return run


def settings(**changes) -> TrainSettings:
    return complete_settings(TrainSettings(epochs=3, batch_size=10, milestones=[2], save_every=0, **changes),
                             "synthetic")


def train(backend=None, *, compile: bool = True, monkeypatch=None, eval_batch: int | None = None,
          net=dropout_net):
    """(trainer, history, warnings) of 3 epochs of ``net`` on array_splits: 48 training images in
    batches of 10 (4 full + 1 of 8), 12 validation and 12 test images (batches of 10 + 2)."""
    if backend is not None:
        monkeypatch.setattr(compiled, "compile_model", functools.partial(compiled.compile_model, backend=backend))
    masks = random_masks(net(), 0.5, seed=1)
    trainer = Trainer(net(), masks, array_splits(), settings(compile=compile), seed=7, device=CPU,
                      eval_batch_size=eval_batch)
    warnings: list[str] = []
    history = trainer.run(callbacks=TrainCallbacks(on_warning=warnings.append))
    return trainer, history, warnings


def test_full_batches_run_compiled_and_the_last_smaller_batch_eagerly_without_recompiling(monkeypatch):
    eager, eager_history, _ = train(compile=False)
    backend = CountingBackend()
    trainer, history, warnings = train(backend, monkeypatch=monkeypatch)
    assert warnings == []
    assert trainer.compiled is not None and trainer.compiled.active
    # per epoch: 4 full training batches, and 1 full batch of 10 in each of val and test; the
    # training batch of 8 and the evaluation batches of 2 run eagerly
    assert trainer.compiled.compiled_calls == 3 * (4 + 1 + 1)
    assert backend.graphs == 2  # one graph for training, one for evaluation: no recompilation per size
    # the graph runs the eager kernels here, and the first compiled step's trial is undone
    # (dropout draws, batch-norm statistics): the very same run
    assert strip_times(history) == strip_times(eager_history)
    assert_same_weights(trainer, eager)
    assert trainer.model.state_dict().keys() == eager.model.state_dict().keys()  # no "module." prefix


def test_the_evaluation_graph_follows_the_evaluation_batch_size(monkeypatch):
    trainer, _, _ = train(CountingBackend(), monkeypatch=monkeypatch, eval_batch=12)
    assert trainer.compiled.compiled_calls == 3 * (4 + 1 + 1)  # val and test: one batch of 12 each


@pytest.mark.parametrize("when", ["compiling", "running"])
def test_a_compile_failure_warns_once_and_continues_eagerly_from_where_it_was(monkeypatch, when):
    """A failure while compiling, or once the graph has run (batch-norm statistics updated, dropout
    drawn), costs one warning: the run ends with the eager run's weights, bit for bit."""
    eager, eager_history, _ = train(compile=False)
    trainer, history, warnings = train(CountingBackend(fail=when), monkeypatch=monkeypatch)
    assert len(warnings) == 1
    assert warnings[0].startswith("--compile: torch.compile failed on this model (")
    assert "training continues without it" in warnings[0] and "\n" not in warnings[0]
    assert not trainer.compiled.active and trainer.compiled.compiled_calls == 0
    assert strip_times(history) == strip_times(eager_history)
    assert_same_weights(trainer, eager)


def test_without_a_cpp_compiler_compile_warns_and_trains_eagerly(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    eager, eager_history, _ = train(compile=False)
    trainer, history, warnings = train(compile=True)
    assert warnings == ["--compile: torch.compile needs a C++ compiler on the CPU and '/nonexistent/g++' was "
                        "not found; install it or set CXX; training without it"]
    assert trainer.compiled is None
    assert strip_times(history) == strip_times(eager_history)
    assert_same_weights(trainer, eager)


def test_unavailable_names_what_is_missing_on_a_gpu(monkeypatch):
    import torch.utils._triton

    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: False)
    assert "needs Triton" in compiled.unavailable(torch.device("cuda"))
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: True)
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert "needs a C compiler for Triton and /nonexistent/cc was not found" in compiled.unavailable(torch.device("cuda"))
    assert "not 'mps'" in compiled.unavailable(torch.device("mps"))


def test_compile_is_a_recipe_key_and_recorded_with_the_settings(tmp_path):
    from force_cli.config import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  compile: true\n")
    assert load_recipe(recipe).sections["train"] == {"compile": True}
    recipe.write_text("train:\n  compile: fast\n")
    from force_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="'compile' must be bool"):
        load_recipe(recipe)


def test_inductor_on_the_cpu_trains_to_the_eager_weights_within_float_noise():
    """The real thing (inductor's C++ backend, where the machine has a compiler): fused kernels
    reorder float sums, so the weights agree closely rather than bit for bit. (No dropout here:
    inductor draws its own random numbers.)"""
    if compiled.unavailable(CPU) is not None:
        pytest.skip(compiled.unavailable(CPU))
    eager, eager_history, _ = train(compile=False, net=tiny_convnet)
    trainer, history, warnings = train(compile=True, net=tiny_convnet)
    assert warnings == [] and trainer.compiled.active and trainer.compiled.compiled_calls == 18
    for key, value in eager.model.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)
    for ours, theirs in zip(history, eager_history):
        assert ours["test_acc"] == pytest.approx(theirs["test_acc"], abs=1 / 12 + 1e-9)  # one image at most


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_train_to_the_eager_weights_within_float_noise():
    cuda = torch.device("cuda")
    masks = random_masks(tiny_convnet(), 0.5, seed=1)
    runs = {}
    for flag in (False, True):
        trainer = Trainer(tiny_convnet(), masks, array_splits(), settings(compile=flag), seed=7, device=cuda)
        warnings: list[str] = []
        trainer.run(callbacks=TrainCallbacks(on_warning=warnings.append))
        runs[flag] = trainer
        if flag:
            assert warnings == [] and trainer.compiled.cuda_graphs and trainer.compiled.compiled_calls == 18
    for key, value in runs[False].model.state_dict().items():
        torch.testing.assert_close(runs[True].model.state_dict()[key], value, rtol=1e-3, atol=1e-4, msg=key)


def test_a_compiled_run_stopped_inside_an_epoch_resumes_bit_identically():
    """With inductor on the CPU: the resumed run compiles again (its trial undone) and ends with
    the uninterrupted compiled run's weights, bit for bit."""
    if compiled.unavailable(CPU) is not None:
        pytest.skip(compiled.unavailable(CPU))
    straight, history, _ = train(compile=True, net=tiny_convnet)
    masks = random_masks(tiny_convnet(), 0.5, seed=1)
    second, resumed = run_stopped_and_resumed(tiny_convnet, masks, settings(compile=True))
    assert strip_times(resumed) == strip_times(history)
    assert_same_weights(second, straight)


def test_under_torchrun_compiled_ranks_train_like_eager_ranks(tmp_path):
    """DDP around the compiled model (2 CPU processes, gloo): the same weights as the eager ranks'
    within float noise, and no warning on stderr."""
    from force_cli.checkpoint import load_checkpoint
    from tests.test_torchrun import _force, _lenet_checkpoint

    if compiled.unavailable(CPU) is not None:
        pytest.skip(compiled.unavailable(CPU))
    init = _lenet_checkpoint(tmp_path / "lenet.safetensors")
    common = ["train", init, "--epochs", "2", "--device", "cpu", "--batch-size", "16"]
    run = _force([*common, "--compile", "-o", "compiled.safetensors"], tmp_path, nproc=2)
    _force([*common, "-o", "eager.safetensors"], tmp_path, nproc=2)
    for noise in ("--compile", "No CUDA runtime", "Traceback"):  # no fallback warning, no inductor chatter
        assert noise not in run.stderr, run.stderr[-2000:]
    a, b = load_checkpoint(tmp_path / "eager.safetensors"), load_checkpoint(tmp_path / "compiled.safetensors")
    assert b.metadata["training"]["compile"] is True and b.metadata["training"]["world_size"] == 2
    for name, weight in a.state_dict.items():
        torch.testing.assert_close(b.state_dict[name], weight, rtol=1e-4, atol=1e-5, msg=name)
