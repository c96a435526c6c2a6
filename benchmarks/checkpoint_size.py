"""File size and load time of dense vs compact checkpoints (prints JSON, one document per line).

Target (issue 11): at >= 99 % sparsity, the compact encoding of the pruned weights (kept values
plus mask) takes at most 1.5x the bytes of the kept values alone. The whole file is reported too:
it also holds the unpruned tensors (biases, batch-norm parameters and statistics) and the metadata.

Masks come from ``force_cli.pruning.prune`` with ``--method magnitude`` (default) on a freshly
initialised model: the size depends on the density and on how the kept weights are spread,
not on which criterion chose them, and magnitude pruning of ResNet-50 takes seconds where FORCE
would take hours on a CPU. Load time is the median of ``--repeats`` calls of ``load_checkpoint``
(files just written, so from the page cache), alone (``*_load_s``: safetensors may map the dense
file lazily) and followed by one pass over every weight and mask (``*_load_read_s``: what loading
into a model costs at least); the 1-minute load average is printed beside it.

    python benchmarks/checkpoint_size.py
    python benchmarks/checkpoint_size.py --models lenet300 --sparsities 0.99 --repeats 9
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

from force_cli.checkpoint import compact
from force_cli.checkpoint import load_checkpoint, save_checkpoint
from force_cli.models import build_model
from force_cli.pruning import prune

# LeNet-300-100 on MNIST-sized input; ResNet-50 as torchvision's ImageNet architecture (25.6 M parameters)
MODELS = {
    "lenet300": dict(num_classes=10, in_channels=1, image_size=28, imagenet_style=False),
    "resnet50": dict(num_classes=1000, in_channels=3, image_size=224, imagenet_style=True),
}


def encoded_bytes(path: Path) -> int:
    """Bytes of the compact file's pruned-weight tensors (values:, bits:, gaps:)."""
    with safe_open(str(path), "pt") as f:
        return sum(f.get_slice(k).get_shape()[0] * (1 if f.get_slice(k).get_dtype() == "U8" else
                                                    2 if f.get_slice(k).get_dtype() in ("U16", "F16", "BF16") else 4)
                   for k in f.keys() if k.startswith(compact.PREFIXES))


def median_load_seconds(path: Path, repeats: int, read: bool) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ckpt = load_checkpoint(path)
        if read:
            for tensor in [*ckpt.state_dict.values(), *ckpt.masks.values()]:
                tensor.sum()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.99, 0.995, 0.999])
    parser.add_argument("--method", default="magnitude", choices=["magnitude", "random"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            torch.manual_seed(0)
            model = build_model(name, **MODELS[name])
            for sparsity in args.sparsities:
                result = prune(model, method=args.method, sparsity=sparsity, seed=0)
                meta = {"stage": "init", "model": name, "model_args": MODELS[name], "dataset": "synthetic"}
                dense, small = Path(tmp) / "dense.safetensors", Path(tmp) / "compact.safetensors"
                save_checkpoint(dense, model.state_dict(), result.masks, meta)
                save_checkpoint(small, model.state_dict(), result.masks, meta, compact=True)
                kept_bytes = result.kept * 4  # float32 weights
                encoded = encoded_bytes(small)
                record = {
                    "model": name, "sparsity": sparsity, "kept": result.kept, "prunable": result.total,
                    "dense_bytes": dense.stat().st_size, "compact_bytes": small.stat().st_size,
                    "kept_value_bytes": kept_bytes, "compact_pruned_weight_bytes": encoded,
                    "pruned_weights_over_kept_values": round(encoded / kept_bytes, 3),
                    "file_over_kept_values": round(small.stat().st_size / kept_bytes, 3),
                    "dense_load_s": round(median_load_seconds(dense, args.repeats, False), 4),
                    "compact_load_s": round(median_load_seconds(small, args.repeats, False), 4),
                    "dense_load_read_s": round(median_load_seconds(dense, args.repeats, True), 4),
                    "compact_load_read_s": round(median_load_seconds(small, args.repeats, True), 4),
                    "loadavg_1min": round(os.getloadavg()[0], 2),
                }
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
