"""FORCE pruning time vs the same number of bare forward+backward passes (prints JSON).

One JSON line per model, all measured in one run. Each repeat runs one FORCE prune of T steps
and, right after each of its steps (from the prune's ``on_step`` hook), one bare forward+backward
pass on a fresh copy of the model, so that the two are interleaved step by step and machine noise
hits both alike. The prune's time is its wall (or CPU) time less the time spent in those passes,
set-up and clean-up included. ``ratio`` is the median over repeats of prune time / bare time;
``repeat_ratios`` shows each repeat (their spread is the honest error bar), ``cpu_ratio`` the same
in the process's CPU time. The bare passes run on their own fresh copy, as the prune works on its
own: on the project's 2-core VM the fastest passes of two copies of the same weights were once
12 % apart (where their memory lies). Interleaving step by step matters there: timing a whole
prune against 10 passes in a block, 5 pairs of one run gave ratios from 0.90 to 1.15.

Targets (issue 10): <= 1.05 for the CIFAR VGG-19 (batch 64, T = 10, sparsity 0.995) and <= 2 for
LeNet-300-100 (MNIST-shaped input), whose passes are so cheap that the pruning bookkeeping shows;
ResNet-50 (CIFAR-style) is reported beside them. Synthetic input; the thread count is torch's
default unless ``--threads`` is given.

``counts`` (unless ``--no-counts``) gives, for one pruning step after the first, the operations
torch dispatches and the host read-backs among them, beside one bare pass's (issue 17: at most 4
read-backs and 2 x the bare operations on a GPU's path; ``--flat-path`` takes that path on the CPU
too). On CUDA, ``peak_mib`` gives the peak memory above the model of one bare pass and of one
prune (issue 17: the prune's at most 1.2 x the pass's on VGG-19).

    python benchmarks/prune_speed.py [--models vgg19,resnet50,lenet300] [--steps 10] [--threads N]
    python benchmarks/prune_speed.py --device cuda --batch-size 128 --steps 60
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from force_cli.allocator import keep_freed_memory
from force_cli.models import build_model
from force_cli.op_counts import OpCounter
from force_cli.pruning import flat, prune
from force_cli.pruning.masks import prunable_weights

#: Input shape (C, H, W) per model: LeNet-300-100 is an MNIST network, the others CIFAR ones.
SHAPES = {"lenet300": (1, 28, 28), "lenet5": (1, 28, 28)}
TARGETS = {"vgg19": 1.05, "lenet300": 2.0}


class SameBatch:
    def __init__(self, batch):
        self.batch = batch

    def take(self, n):
        return [self.batch] * n


def bare_passes(model, batch, steps):
    """(wall, CPU) seconds of ``steps`` forward+backward passes."""
    x, y = batch
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def interleaved(model, batch, steps, sparsity, method):
    """((prune wall, prune CPU), (bare wall, bare CPU)) seconds: one prune of ``steps`` steps with
    one bare pass on a fresh copy after each step, each side's time without the other's."""
    fresh = copy.deepcopy(model)
    bare = [0.0, 0.0]

    def one_bare_pass(info):
        wall, cpu = bare_passes(fresh, batch, 1)
        bare[0] += wall
        bare[1] += cpu

    start, cpu = time.perf_counter(), time.process_time()
    prune(model, method=method, sparsity=sparsity, steps=steps, stream=SameBatch(batch), on_step=one_bare_pass)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return (wall - bare[0], cpu - bare[1]), tuple(bare)


def counts(model, batch, sparsity, method):
    """Operations and read-backs of one pruning step (the second of three) and of one bare pass."""
    x, y = batch
    fresh = copy.deepcopy(model)
    with OpCounter() as bare:
        fresh.zero_grad(set_to_none=True)
        F.cross_entropy(fresh(x), y).backward()
    del fresh
    snapshots = []
    with OpCounter() as counter:
        prune(model, method=method, sparsity=sparsity, steps=3, stream=SameBatch(batch),
              on_step=lambda info: snapshots.append(counter.snapshot()))
    (ops_1, read_backs_1), (ops_2, read_backs_2) = snapshots[:2]
    return {"step_ops": ops_2 - ops_1, "step_read_backs": read_backs_2 - read_backs_1, "bare_ops": bare.ops,
            "bare_read_backs": bare.read_backs, "ops_ratio": round((ops_2 - ops_1) / bare.ops, 3)}


def peak_mib(run, device=None):
    """Peak CUDA memory allocated above the model (and the batch) while ``run()`` runs, in MiB;
    ``device``: the CUDA device (default: the current one)."""
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize(device)
    return round((torch.cuda.max_memory_allocated(device) - base) / 2**20, 1)


def peak_memory(model, batch, steps, sparsity, method, device=None):
    fresh = copy.deepcopy(model)
    bare = peak_mib(lambda: bare_passes(fresh, batch, 1), device)
    del fresh
    pruning = peak_mib(lambda: prune(model, method=method, sparsity=sparsity, steps=steps, stream=SameBatch(batch)),
                       device)
    return {"bare": bare, "prune": pruning, "ratio": round(pruning / bare, 3)}


def measure(name, args, device):
    torch.manual_seed(0)
    shape = SHAPES.get(name, (3, 32, 32))
    model = build_model(name, num_classes=10, in_channels=shape[0], image_size=shape[1]).to(device).train()
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch_size, *shape, generator=g).to(device),
             torch.randint(0, 10, (args.batch_size,), generator=g).to(device))
    interleaved(model, batch, 1, 0.5, args.method)  # warm-up (allocator, kernels)
    weights = sum(w.numel() for w in prunable_weights(model).values())
    repeats = args.repeats if weights > 5_000_000 else 10 * args.repeats  # small models: cheap, noisy
    runs = [interleaved(model, batch, args.steps, args.sparsity, args.method) for _ in range(repeats)]
    pruning, bare = [p[0] for p, _ in runs], [b[0] for _, b in runs]
    pruning_cpu, bare_cpu = [p[1] for p, _ in runs], [b[1] for _, b in runs]
    ratios = [p / b for p, b in zip(pruning, bare)]
    return {
        "benchmark": "prune_speed",
        "model": name,
        "input_shape": list(shape),
        "prunable_weights": weights,
        "method": args.method,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "sparsity": args.sparsity,
        "bare_seconds": [round(t, 4) for t in bare],
        "prune_seconds": [round(t, 4) for t in pruning],
        "ratio": round(statistics.median(ratios), 4),
        "repeat_ratios": [round(r, 4) for r in ratios],
        "cpu_ratio": round(statistics.median(p / b for p, b in zip(pruning_cpu, bare_cpu)), 4),
        "target_ratio": TARGETS.get(name),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "path": "flat" if flat.takes_flat_path(device) else "cpu",
        "counts": counts(model, batch, args.sparsity, args.method) if args.counts else None,
        "peak_mib": peak_memory(model, batch, args.steps, args.sparsity, args.method) if device.type == "cuda" else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg19,resnet50,lenet300", help="comma-separated registry names")
    parser.add_argument("--method", default="force")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.995)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--counts", action=argparse.BooleanOptionalAction, default=True,
                        help="count one step's operations and read-backs (default: on)")
    parser.add_argument("--flat-path", action="store_true", help="take the GPU's flat path on the CPU too")
    args = parser.parse_args()
    if args.flat_path:
        flat.CPU_PATH_DEVICES = frozenset()
    malloc = "kept" if keep_freed_memory() else "system"  # as the force command does
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for name in args.models.split(","):
        print(json.dumps(measure(name.strip(), args, device) | {"malloc": malloc}), flush=True)


if __name__ == "__main__":
    main()
