"""Images per second of the in-memory data path: batched transforms vs one image at a time (JSON).

Both sides load the same CIFAR-shaped uint8 images through a DataLoader (0 workers, batch 128)
with the training augmentation (random crop with 4-pixel padding, flip, normalisation) and
produce identical batches; repeats alternate the two, and the medians are compared.

    python benchmarks/data_speed.py [--images 10000] [--batch-size 128] [--repeats 3] [--no-augment]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from torch.utils.data import DataLoader, Dataset

from force_cli.data import dataset_info
from force_cli.data.arrays import ArrayDataset
from force_cli.data.transforms import tensor_transforms


class PerSample(Dataset):
    """The same dataset without ``__getitems__``: DataLoader transforms one image at a time."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


def epoch(dataset, batch_size):
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-augment", action="store_true")
    args = parser.parse_args()
    info = dataset_info("cifar10")
    train_tf, test_tf = tensor_transforms(info, crop=True, flip=True, augment=not args.no_augment)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.images,), generator=g)
    batched = ArrayDataset(images, labels, train_tf)
    per_sample = PerSample(batched)
    times = {"batched": [], "per_sample": []}
    for _ in range(args.repeats):
        times["batched"].append(epoch(batched, args.batch_size))
        times["per_sample"].append(epoch(per_sample, args.batch_size))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "benchmark": "data_speed", "augment": not args.no_augment, "images": args.images,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "batched_images_per_s": round(args.images / med["batched"]),
        "per_sample_images_per_s": round(args.images / med["per_sample"]),
        "epoch_time_ratio": round(med["batched"] / med["per_sample"], 4),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
