"""``--compile``: the model's forward and backward compiled by ``torch.compile``, replayed as CUDA
graphs on a GPU.

What is compiled: the model (AOTAutograd compiles its backward with its forward). The loss, the
mask enforcement and the optimizer step stay eager: a handful of fused foreach kernels per step.

Static shapes: one graph per mode, for the full batch only (training: ``--batch-size``; evaluation:
its batch size). A smaller batch, the last one of an epoch, which force keeps as the paper's loader
does, runs eagerly through the same module: same parameters and buffers, no recompilation and no
extra graph per odd size. The shapes a graph sees are therefore static, so on CUDA the graphs are
captured as CUDA graphs (``mode="reduce-overhead"``): a step is one replay instead of a launch per
kernel.

Where torch.compile cannot run (a platform or Python version dynamo does not support, no C++
compiler for the CPU backend, no Triton or C compiler for the GPU one) ``compile_model`` returns
None and a one-line reason, and training goes on eagerly. Where it fails on a model, the first
compiled training step is a trial (forward and backward, the batch-norm buffers and RNG states
restored after it), so the failure costs nothing but a one-line warning and the run continues
eagerly from exactly where it was. Under torchrun there is no trial: a failure there is raised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from force_cli.safe_text import one_line


def unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot run on ``device`` here (a one-line reason with its fix), or None."""
    try:
        import torch._dynamo
    except Exception as exc:  # a broken or partial install
        return f"torch.compile cannot be imported ({one_line(exc).splitlines()[0][:120]})"
    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support Python {sys.version.split()[0]} here"
    if device.type == "cpu":
        # inductor's CPU backend builds C++ with $CXX, else g++ (clang++ on macOS, cl on Windows)
        default = "cl" if sys.platform == "win32" else "clang++" if sys.platform == "darwin" else "g++"
        cxx = os.environ.get("CXX", default)
        if shutil.which(cxx) is None:
            return f"torch.compile needs a C++ compiler on the CPU and '{cxx}' was not found; install it or set CXX"
    elif device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "torch.compile needs Triton on the GPU and it is not installed; pip install triton"
        # Triton builds its launcher with $CC, else gcc or clang
        cc = os.environ.get("CC")
        if (shutil.which(cc) if cc else shutil.which("gcc") or shutil.which("clang")) is None:
            return f"torch.compile needs a C compiler for Triton and {cc or 'gcc or clang'} was not found; install one or set CC"
    else:
        return f"--compile supports CPU and CUDA devices, not '{device.type}'"
    return None


class CompiledModel(nn.Module):
    """Routes each batch to the compiled module (the full batch of the current mode) or to the
    eager one (any other size). Holds ``module`` as its child, so ``train()``/``eval()``,
    ``parameters()`` and DDP see the model's own; its ``state_dict`` is not the model's (keys
    start with ``module.``): save the model, not this.
    """

    def __init__(self, module: nn.Module, compiled: Callable, batch_sizes: Mapping[bool, int], *,
                 cuda_graphs: bool, trial: bool, on_warning: Callable[[str], None] | None = None):
        super().__init__()
        self.module = module
        self.batch_sizes = dict(batch_sizes)  # training mode (True/False) -> the batch size compiled
        self.cuda_graphs, self.trial, self.on_warning = cuda_graphs, trial, on_warning
        self.compiled_calls = 0  # batches that went through the compiled module (for tests and benchmarks)
        # not a submodule: torch.compile's wrapper holds ``module`` again (parameters twice in state_dict)
        object.__setattr__(self, "_compiled", compiled)
        self._started: set[tuple[bool, bool]] = set()  # (training, grad enabled) already run compiled

    @property
    def active(self) -> bool:
        """Whether batches still go through the compiled module (False after a failure)."""
        return self._compiled is not None

    def forward(self, x: Tensor) -> Tensor:
        training = self.module.training
        if self._compiled is None or x.shape[0] != self.batch_sizes.get(training):
            return self.module(x)
        mode = (training, torch.is_grad_enabled())
        if mode not in self._started:
            return self._first(x, mode)
        return self._run(x)

    def _run(self, x: Tensor) -> Tensor:
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are done with
        out = self._compiled(x)
        self.compiled_calls += 1
        return out

    def _first(self, x: Tensor, mode: tuple[bool, bool]) -> Tensor:
        """The first compiled batch of a mode, where compilation happens. Evaluation changes no
        state, a trial restores it; either way a failure leaves the run as it was, and eager."""
        training, grad = mode
        if training and not (grad and self.trial):  # no safe way back from a failure: let it raise
            self._started.add(mode)
            with _quiet_cpp_extension_logger():
                return self._run(x)
        try:
            with _quiet_cpp_extension_logger():
                if training:
                    self._trial(x)
                out = self._run(x)
        except Exception as exc:
            self._compiled = None
            if self.on_warning is not None:
                first = (one_line(exc) or type(exc).__name__)[:200]
                self.on_warning(f"--compile: torch.compile failed on this model ({type(exc).__name__}: {first}); "
                                "training continues without it")
            return self.module(x)
        self._started.add(mode)
        return out

    def _trial(self, x: Tensor) -> None:
        """One compiled forward and backward (compiling both) whose effects are undone: the
        buffers (batch-norm statistics) and the RNG states are restored; no gradient is stored."""
        buffers = list(self.module.buffers())
        saved = [b.detach().clone() for b in buffers]
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(x.device) if x.is_cuda else None
        try:
            out = self._run(x)
            params = [p for p in self.module.parameters() if p.requires_grad]
            if out.requires_grad and params:
                torch.autograd.grad(out.float().sum(), params, allow_unused=True)
        finally:
            with torch.no_grad():
                for buffer, value in zip(buffers, saved):
                    buffer.copy_(value)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, x.device)
        self.compiled_calls -= 1  # the trial is not a training batch


@contextlib.contextmanager
def _quiet_cpp_extension_logger():
    """torch's C++-extension module warns on import, on a CUDA build without a GPU, that it found no
    CUDA runtime; inductor imports it on the CPU, where that is expected and says nothing useful."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def compile_model(module: nn.Module, device: torch.device, *, train_batch: int, eval_batch: int,
                  trial: bool = True, backend: str | Callable | None = None,
                  on_warning: Callable[[str], None] | None = None) -> tuple[CompiledModel | None, str | None]:
    """(the routing module, None), or (None, why torch.compile cannot run here) for ``--compile``.

    ``backend`` (tests, experiments): another torch.compile backend than inductor; CUDA graphs
    are inductor's, so they are used only with the default backend on CUDA.
    """
    reason = unavailable(device) if backend is None else None
    if reason is not None:
        return None, reason
    cuda_graphs = backend is None and device.type == "cuda"
    compiled = torch.compile(module, backend=backend or "inductor", dynamic=False,
                             mode="reduce-overhead" if cuda_graphs else None)
    return CompiledModel(module, compiled, {True: train_batch, False: eval_batch}, cuda_graphs=cuda_graphs,
                         trial=trial, on_warning=on_warning), None
