"""Epoch time of the training data path: batched in-memory batches vs one image at a time (JSON).

Every arm goes through force-cli's own training loader (``training.order.epoch_batches``, 0
workers) over the same CIFAR-shaped uint8 images with the training augmentation (random crop with
4-pixel padding, flip, normalisation), and moves each batch to ``--device`` as the training loop
does; all arms produce the same batches, bit for bit. An "epoch" is one pass over ``--images``
images (no model: the data path alone).

- ``per_sample``: a DataLoader transforming one image at a time (the path before issue 10);
- ``batched_loader``: a DataLoader calling the dataset's batched ``__getitems__`` (the first
  batched version: batched transforms, but per-sample collation and a copy per batch);
- ``batched``: what ``train`` does now: the images held on ``--device`` and each batch made there
  by tensor operations, without a DataLoader.

Repeats alternate the arms, so machine noise hits them alike; medians are compared within the run.

    python benchmarks/data_speed.py [--images 10000] [--batch-size 128] [--repeats 3] [--threads N]
    python benchmarks/data_speed.py --device cuda --images 50000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch.utils.data import Dataset

from force_cli.data import dataset_info
from force_cli.data.arrays import ArrayDataset, to_device
from force_cli.data.transforms import tensor_transforms
from force_cli.training.order import _loader, EpochSampler, epoch_batches, epoch_seed


class PerSample(Dataset):
    """The same dataset without ``__getitems__``: a DataLoader transforms one image at a time."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


def batched_loader(dataset, batch_size, epoch, device):
    """The previous default: a DataLoader over the batched ``__getitems__`` (pinned for CUDA)."""
    sampler = EpochSampler(len(dataset), 0, epoch)
    return iter(_loader(dataset, batch_size, workers=0, device=device, sampler=sampler,
                        generator=torch.Generator().manual_seed(epoch_seed(0, epoch))))


def epoch_time(batches, device) -> float:
    """Seconds to draw every batch of an epoch and have it on ``device``."""
    start = time.perf_counter()
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-augment", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    info = dataset_info("cifar10")
    train_tf, _ = tensor_transforms(info, crop=True, flip=True, augment=not args.no_augment)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    on_cpu = ArrayDataset(images, labels, train_tf)
    on_device = to_device(on_cpu, device)
    arms = {
        "per_sample": lambda e: epoch_batches(PerSample(on_cpu), args.batch_size, 0, e, device=device),
        "batched_loader": lambda e: batched_loader(on_cpu, args.batch_size, e, device),
        "batched": lambda e: epoch_batches(on_device, args.batch_size, 0, e, device=device),
    }
    times = {name: [] for name in arms}
    for name, arm in arms.items():  # warm-up: kernels, allocator
        torch.manual_seed(0)
        epoch_time(arm(1), device)
    for repeat in range(args.repeats):
        for name, arm in arms.items():
            torch.manual_seed(repeat)
            times[name].append(epoch_time(arm(repeat + 2), device))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "benchmark": "data_speed", "device": str(device), "augment": not args.no_augment,
        "images": args.images, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "epoch_seconds": {k: round(v, 4) for k, v in med.items()},
        "images_per_s": {k: round(args.images / v) for k, v in med.items()},
        "epoch_time_ratio_batched_to_per_sample": round(med["batched"] / med["per_sample"], 4),
        "epoch_time_ratio_batched_loader_to_per_sample": round(med["batched_loader"] / med["per_sample"], 4),
        "epoch_time_ratio_batched_to_batched_loader": round(med["batched"] / med["batched_loader"], 4),
        "all_epoch_seconds": {k: [round(t, 4) for t in v] for k, v in times.items()},
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
