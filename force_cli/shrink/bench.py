"""`force bench`: inference time of the dense masked network, the shrunk one and sparse kernels.

Whole network: ``dense`` (the checkpoint's model, pruned weights zero: what every other command
runs), ``shrunk`` (``force shrink``'s network) and ``csr`` (the shrunk network with every conv and
linear layer as a CSR matrix), at batch 1 and at the chosen batch size: the median over repeats
(after warm-up; the three networks take turns of a few calls, so that load changes hit all alike), peak memory of one forward pass (CUDA: the allocator's peak; CPU: the profiler's
allocations), bytes of the tensors a file would hold, and the largest output difference to dense.
On the CPU, with onnx and onnxruntime installed, a fourth: ``onnxruntime`` (the shrunk network
exported to ONNX in memory; ``onnx_runtime``), whose memory torch cannot see; the report says why
where it is left out.

Per conv/linear layer: the same three on that layer's input; ``bsr``, the shrunk weight's product
as a BSR matrix (square blocks of 4, else 2, where one divides both sides; no bias); and the
break-even density of its shrunk shape: the density below which a CSR matrix of that shape, with
random kept positions, runs faster than the dense layer (interpolated between measured densities;
0 when CSR never wins, 1 when it always does).

On the CPU, timings use the threads torch is set to (``--threads``; tests pin one).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import save as serialize
from torch import nn

from force_cli.shrink.onnx_runtime import onnx_runner, versions as onnx_versions
from force_cli.shrink.program import ShrunkNet, run_op, sparse_product
from force_cli.shrink.rewrite import Shrunk
from force_cli.shrink.sparse import mixing_indices, to_bsr, to_csr

#: Densities at which each layer shape's CSR kernel is timed to find its break-even density.
PROBE_DENSITIES = (0.001, 0.01, 0.05, 0.2, 0.5)
Progress = Callable[[str, int, int], None]


@dataclass
class BenchSettings:
    batch_size: int = 256
    repeats: int = 20
    warmup: int = 3
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    layers: bool = True
    break_even: bool = True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def median_seconds(fn: Callable[[], Any], settings: BenchSettings, repeats: int | None = None) -> float:
    """Median wall time of ``fn()`` over repeats, after warm-up (CUDA: synchronised around each)."""
    for _ in range(settings.warmup):
        fn()
    times = []
    for _ in range(repeats or settings.repeats):
        _sync(settings.device)
        start = time.perf_counter()
        fn()
        _sync(settings.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def interleaved_medians(fns: dict[str, Callable[[], Any]], settings: BenchSettings) -> dict[str, float]:
    """Median wall time of each function, the repeats taken in turns of a few calls each (a a a,
    b b b, c c c, a a a, ...): a change in the machine's load weighs on all of them alike, while
    each call still finds its own weights in the caches as in real use (the first call of each
    turn is not timed)."""
    for fn in fns.values():
        for _ in range(settings.warmup):
            fn()
    block = max(1, min(10, settings.repeats // 3))
    times: dict[str, list[float]] = {name: [] for name in fns}
    while len(next(iter(times.values()))) < settings.repeats:
        for name, fn in fns.items():
            fn()
            for _ in range(min(block, settings.repeats - len(times[name]))):
                _sync(settings.device)
                start = time.perf_counter()
                fn()
                _sync(settings.device)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


@contextlib.contextmanager
def _quiet_stderr():
    """The CPU profiler's C++ start/stop lines go straight to file descriptor 2; hide them."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@torch.no_grad()
def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak memory allocated by one call beyond what was allocated before it."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile  # only on the CPU path: the profiler is a heavy import

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Size of a safetensors file holding ``tensors`` (no metadata)."""
    return len(serialize({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def _layer_inputs(module: nn.Module, names: set[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each named layer of ``module`` gets for ``x``."""
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_pre_hook(lambda _m, args, n=n: seen.setdefault(n, args[0]))
               for n, m in module.named_modules() if n in names]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def program_inputs(program: dict, tensors: dict, x: torch.Tensor) -> list[torch.Tensor]:
    """The input of every op of a program for ``x``."""
    values, inputs = [x], []
    with torch.no_grad():
        for op in program["ops"]:
            args = [values[i] for i in op["in"]]
            inputs.append(args)
            values.append(run_op(op, args, tensors))
    return inputs


def _random_csr_time(op: dict, weight_shape: list[int], x: torch.Tensor, d: float, settings: BenchSettings) -> float:
    """Time of the op as CSR with a random weight of density ``d`` (same shape and input)."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(weight_shape, generator=g) * (torch.rand(weight_shape, generator=g) < d)
    probe = {k: v for k, v in op.items() if k not in ("bias_map",)} | {"weight": "w", "bias": None}
    program, tensors = to_csr({"ops": [probe | {"in": [0]}], "output": 1}, {"w": weight.to(settings.device, x.dtype)}, [0])
    return median_seconds(lambda: run_op(program["ops"][0], [x], tensors), settings, max(3, settings.repeats // 4))


def _bsr_time(op: dict, weight: torch.Tensor, x: torch.Tensor, settings: BenchSettings) -> tuple[int | None, float | None]:
    """(block side, time) of the op's product with its weight as a BSR matrix; (None, None) where
    no block side divides the weight or this torch has no BSR product on the device."""
    matrix = to_bsr(weight)
    if matrix is None:
        return None, None
    try:
        sparse_product(op, x, matrix)
    except (RuntimeError, NotImplementedError):  # no BSR kernel for this layout, dtype or device
        return None, None
    return matrix.values().shape[-1], median_seconds(lambda: sparse_product(op, x, matrix), settings)


def break_even(dense_s: float, times: list[tuple[float, float]]) -> float:
    """The density where CSR time crosses dense time (log-log interpolation between probes)."""
    faster = [d for d, t in times if t < dense_s]
    if not faster:
        return 0.0
    if len(faster) == len(times):
        return 1.0
    for (d0, t0), (d1, t1) in zip(times, times[1:]):
        if t0 < dense_s <= t1:
            a, b = math.log(t0), math.log(t1)
            f = (math.log(dense_s) - a) / (b - a) if b != a else 0.0
            return math.exp(math.log(d0) + f * (math.log(d1) - math.log(d0)))
    return max(faster)


def bench_layers(dense: nn.Module, shrunk: Shrunk, sparse: tuple[dict, dict], x: torch.Tensor, settings: BenchSettings,
                 progress: Progress | None = None) -> list[dict[str, Any]]:
    program, tensors = shrunk.program, shrunk.tensors
    indices = mixing_indices(program)
    full_inputs = _layer_inputs(dense, {program["ops"][i]["layer"] for i in indices}, x)
    shrunk_inputs = program_inputs(program, tensors, x)
    modules = dict(dense.named_modules())
    rows = []
    for n, i in enumerate(indices, 1):
        op = program["ops"][i]
        layer, args = op["layer"], shrunk_inputs[i]
        weight = tensors[op["weight"]]
        row = {"layer": layer, "kind": op["op"], "original_shape": op["original"], "shrunk_shape": list(weight.shape),
               "kept_weights": op["kept_weights"],
               "density": op["kept_weights"] / math.prod(op["original"]),
               "shrunk_density": int(weight.count_nonzero()) / max(1, weight.numel())}
        if progress:
            progress(f"layer {layer}", n, len(indices))
        module = modules.get(layer)
        row["dense_s"] = (median_seconds(lambda: module(full_inputs[layer]), settings)
                          if module is not None and layer in full_inputs else None)
        row["shrunk_s"] = median_seconds(lambda: run_op(op, args, tensors), settings)
        sop = sparse[0]["ops"][i]
        row["csr_s"] = median_seconds(lambda: run_op(sop, args, sparse[1]), settings)
        row["bsr_block"], row["bsr_s"] = _bsr_time(sop, weight, args[0], settings)
        if settings.break_even:
            probes = [(d, _random_csr_time(op, list(weight.shape), args[0], d, settings)) for d in PROBE_DENSITIES]
            row["break_even_density"] = break_even(row["shrunk_s"], probes)
        rows.append(row)
    return rows


def bench_models(dense: nn.Module, shrunk: Shrunk, input_shape: tuple[int, ...], settings: BenchSettings,
                 progress: Progress | None = None) -> dict[str, Any]:
    """The whole benchmark: networks at batch 1 and ``settings.batch_size``, then layers."""
    device = settings.device
    dtype = next(dense.parameters()).dtype
    sparse = to_csr(shrunk.program, shrunk.tensors, mixing_indices(shrunk.program))
    dense = dense.to(device).eval()
    nets = {"dense": dense,
            "shrunk": ShrunkNet(shrunk.program, shrunk.tensors).to(device).eval(),
            "csr": ShrunkNet(*sparse).to(device).eval()}
    files = {"dense": tensor_bytes(dense.state_dict()), "shrunk": tensor_bytes(shrunk.tensors),
             "csr": tensor_bytes(sparse[1])}
    example = torch.zeros(1, *input_shape, dtype=dtype, device=device)
    run, onnx_bytes, why_not = onnx_runner(nets["shrunk"], example, torch.get_num_threads())
    if run is not None:  # optional: the shrunk network under onnxruntime (no torch profiler sees its memory)
        nets["onnxruntime"], files["onnxruntime"] = run, onnx_bytes
    batches = sorted({1, settings.batch_size})
    g = torch.Generator().manual_seed(0)
    results: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads() if device.type == "cpu" else None,
                               "batch_sizes": batches, "repeats": settings.repeats, "networks": {},
                               "onnxruntime": onnx_versions() if run is not None else {"skipped": why_not}}
    for step, batch in enumerate(batches, 1):
        if progress:
            progress(f"networks at batch {batch}", step, len(batches))
        x = torch.randn(batch, *input_shape, generator=g, dtype=dtype).to(device)
        with torch.no_grad():
            reference = dense(x)
        medians = interleaved_medians({name: (lambda net=net: net(x)) for name, net in nets.items()}, settings)
        for name, net in nets.items():
            with torch.no_grad():
                out = net(x)
            entry = results["networks"].setdefault(name, {"file_bytes": files[name], "batches": {}})
            entry["batches"][str(batch)] = {
                "median_s": medians[name],
                "peak_bytes": None if name == "onnxruntime" else peak_bytes(lambda: net(x), device),
                "max_abs_diff": float((out - reference).abs().max()),
                "max_rel_diff": float((out - reference).abs().max() / reference.abs().max().clamp_min(1e-30)),
            }
    if settings.layers:
        x = torch.randn(settings.batch_size, *input_shape, generator=g, dtype=dtype).to(device)
        moved = Shrunk(shrunk.program, nets["shrunk"].tensors())  # already on the device
        sparse_moved = (sparse[0], nets["csr"].tensors())
        results["layers"] = bench_layers(dense, moved, sparse_moved, x, settings, progress)
    dense_time = results["networks"]["dense"]["batches"][str(settings.batch_size)]["median_s"]
    results["speedup"] = {name: dense_time / entry["batches"][str(settings.batch_size)]["median_s"]
                          for name, entry in results["networks"].items()}
    return results
