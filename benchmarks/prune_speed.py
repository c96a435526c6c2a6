"""FORCE pruning time vs the same number of bare forward+backward passes (prints JSON).

One JSON line per model, all measured in one run. ``ratio`` = median time of a FORCE prune of T
steps / median time of T bare forward+backward passes on the same batch; repeats alternate the
two measurements so that machine noise hits both alike (``pair_ratios`` shows each pair: on a
loaded machine their spread is the honest error bar). ``cpu_ratio`` compares the process's CPU
time instead: with ``--threads 1`` it barely moves when other jobs share the machine. Targets (issue 10): <= 1.05 for the CIFAR
VGG-19 (batch 64, T = 10, sparsity 0.995) and <= 2 for LeNet-300-100 (MNIST-shaped input), whose
passes are so cheap that the pruning bookkeeping shows; ResNet-50 (CIFAR-style) is reported beside
them. Synthetic input; the thread count is torch's default unless ``--threads`` is given.

    python benchmarks/prune_speed.py [--models vgg19,resnet50,lenet300] [--steps 10] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from force_cli.allocator import keep_freed_memory
from force_cli.models import build_model
from force_cli.pruning import prune
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
    return time.perf_counter() - start, time.process_time() - cpu


def force_pruning(model, batch, steps, sparsity, method):
    """(wall, CPU) seconds of a prune of ``steps`` steps."""
    start, cpu = time.perf_counter(), time.process_time()
    prune(model, method=method, sparsity=sparsity, steps=steps, stream=SameBatch(batch))
    return time.perf_counter() - start, time.process_time() - cpu


def measure(name, args, device):
    torch.manual_seed(0)
    shape = SHAPES.get(name, (3, 32, 32))
    model = build_model(name, num_classes=10, in_channels=shape[0], image_size=shape[1]).to(device).train()
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch_size, *shape, generator=g).to(device),
             torch.randint(0, 10, (args.batch_size,), generator=g).to(device))
    bare_passes(model, batch, 1)  # warm-up (allocator, kernels)
    force_pruning(model, batch, 1, 0.5, args.method)
    weights = sum(w.numel() for w in prunable_weights(model).values())
    repeats = args.repeats if weights > 5_000_000 else 10 * args.repeats  # small models: cheap, noisy
    runs = [(bare_passes(model, batch, args.steps), force_pruning(model, batch, args.steps, args.sparsity, args.method))
            for _ in range(repeats)]
    bare, pruning = [b[0] for b, _ in runs], [p[0] for _, p in runs]
    bare_cpu, pruning_cpu = [b[1] for b, _ in runs], [p[1] for _, p in runs]
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
        "ratio": round(statistics.median(pruning) / statistics.median(bare), 4),
        "pair_ratios": [round(p / b, 4) for p, b in zip(pruning, bare)],  # each pair ran back to back
        # CPU time of this process: with one thread, nearly blind to other jobs on the machine
        "cpu_ratio": round(statistics.median(pruning_cpu) / statistics.median(bare_cpu), 4),
        "target_ratio": TARGETS.get(name),
        "load_average": [round(x, 2) for x in os.getloadavg()],
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
    args = parser.parse_args()
    malloc = "kept" if keep_freed_memory() else "system"  # as the force command does
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for name in args.models.split(","):
        print(json.dumps(measure(name.strip(), args, device) | {"malloc": malloc}), flush=True)


if __name__ == "__main__":
    main()
