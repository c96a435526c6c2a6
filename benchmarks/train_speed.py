"""Masked training time vs the same dense training (prints JSON).

Target (issue 3): masked / dense time per epoch <= 1.05 on CPU for the CIFAR ResNet-18 (or VGG-19)
on synthetic CIFAR-shaped data. An "epoch" here is ``--steps`` training steps of force-cli's own
loop (``training.train_epoch``: forward, backward, gradient masking, SGD step, weight re-masking)
over the same pre-made batches, so data loading is not measured. The dense and the masked model
start from the same weights; repeats alternate the two so that machine noise hits both alike,
and the medians are compared. On a GPU it also reports images per second and peak memory:

    python benchmarks/train_speed.py                                  # CPU, resnet18, batch 32
    python benchmarks/train_speed.py --device cuda --model resnet50 --batch-size 128 --steps 50
    python benchmarks/train_speed.py --device cuda --model resnet50 --batch-size 128 --amp --channels-last
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from force_cli.models import build_model
from force_cli.pruning.masks import prunable_weights
from force_cli.training.loop import autocast_dtype, train_epoch
from force_cli.training.masking import MaskEnforcer


def random_masks(model, sparsity: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(w.shape, generator=g) >= sparsity for n, w in prunable_weights(model).items()}


def run(model, optimizer, enforcer, batches, device, amp_dtype, channels_last) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    # train_epoch reads the loss back once at the end, which waits for the GPU
    train_epoch(model, batches, optimizer, enforcer, device=device, amp_dtype=amp_dtype,
                channels_last=channels_last, sync_every=1 << 30)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="training steps per measured epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sparsity", type=float, default=0.99)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--amp", action="store_true", help="autocast (CUDA only)")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format
    dense = build_model(args.model, num_classes=10, in_channels=3, image_size=32).to(device=device, memory_format=memory_format)
    masked = copy.deepcopy(dense)
    enforcer = MaskEnforcer(masked, random_masks(masked, args.sparsity))
    enforcer.apply_()
    new_sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)  # noqa: E731
    optimizers = {"dense": new_sgd(dense), "masked": new_sgd(masked)}
    amp_dtype = autocast_dtype(args.amp, device)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device),
                torch.randint(0, 10, (args.batch_size,), generator=g).to(device)) for _ in range(args.steps)]

    def measure(kind: str, steps=None) -> float:
        model, enf = (dense, None) if kind == "dense" else (masked, enforcer)
        return run(model, optimizers[kind], enf, batches[:steps], device, amp_dtype, args.channels_last)

    measure("dense", 3), measure("masked", 3)  # warm-up (allocator, kernels, optimizer state)
    times = {"dense": [], "masked": []}
    peak = {}
    for _ in range(args.repeats):
        for kind in ("dense", "masked"):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            times[kind].append(measure(kind))
            if device.type == "cuda":
                peak[kind] = torch.cuda.max_memory_allocated(device) / 2**20

    # the mask operations alone, per step (gradients present, as after a backward)
    for p in masked.parameters():
        p.grad = torch.zeros_like(p)
    start = time.perf_counter()
    for _ in range(20):
        enforcer.mask_grads_()
        enforcer.apply_()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    mask_ops = (time.perf_counter() - start) / 20

    medians = {k: statistics.median(v) for k, v in times.items()}
    images = args.steps * args.batch_size
    result = {
        "benchmark": "train_speed",
        "model": args.model,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "steps_per_epoch": args.steps,
        "sparsity": args.sparsity,
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else False,
        "channels_last": args.channels_last,
        "dense_seconds": [round(t, 4) for t in times["dense"]],
        "masked_seconds": [round(t, 4) for t in times["masked"]],
        "dense_images_per_second": round(images / medians["dense"], 1),
        "masked_images_per_second": round(images / medians["masked"], 1),
        "mask_ops_ms_per_step": round(mask_ops * 1e3, 3),
        "ratio": round(medians["masked"] / medians["dense"], 4),
        "target_ratio": 1.05,
    }
    if peak:
        result["peak_memory_mib"] = {k: round(v, 1) for k, v in peak.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
