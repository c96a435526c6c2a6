"""FORCE pruning time vs the same number of bare forward+backward passes (prints JSON).

Target (issue 2): ratio <= 1.2 on CPU for the CIFAR VGG-19 on synthetic CIFAR-shaped input,
batch 64, T = 10 steps, sparsity 0.995. Both sides see the same batch; repeats alternate the two
measurements so that machine noise hits both alike, and the medians are compared.

    python benchmarks/prune_speed.py [--model vgg19] [--steps 10] [--batch-size 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from force_cli.models import build_model
from force_cli.pruning import prune


class SameBatch:
    def __init__(self, batch):
        self.batch = batch

    def take(self, n):
        return [self.batch] * n


def bare_passes(model, batch, steps):
    x, y = batch
    start = time.perf_counter()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    return time.perf_counter() - start


def force_pruning(model, batch, steps, sparsity, method):
    start = time.perf_counter()
    prune(model, method=method, sparsity=sparsity, steps=steps, stream=SameBatch(batch))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg19")
    parser.add_argument("--method", default="force")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.995)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_model(args.model, num_classes=10, in_channels=3, image_size=32).to(device).train()
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device),
             torch.randint(0, 10, (args.batch_size,), generator=g).to(device))
    bare_passes(model, batch, 1)  # warm-up (allocator, kernels)
    force_pruning(model, batch, 1, 0.5, args.method)
    bare, pruning = [], []
    for _ in range(args.repeats):
        bare.append(bare_passes(model, batch, args.steps))
        pruning.append(force_pruning(model, batch, args.steps, args.sparsity, args.method))
    result = {
        "benchmark": "prune_speed",
        "model": args.model,
        "method": args.method,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "sparsity": args.sparsity,
        "bare_seconds": [round(t, 4) for t in bare],
        "prune_seconds": [round(t, 4) for t in pruning],
        "ratio": round(statistics.median(pruning) / statistics.median(bare), 4),
        "target_ratio": 1.2,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
