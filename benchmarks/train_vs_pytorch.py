"""`force train`'s training path against a plain PyTorch loop written the paper code's way (JSON).

Both sides train the same pruned network from the same weights on the same CIFAR-10-shaped
images, with the same augmentation (random crop with 4-pixel padding, horizontal flip,
normalisation), batch size, optimizer (SGD, momentum 0.9, weight decay 5e-4) and number of
loader workers:

- ``force``: force-cli's own path, as ``force train`` runs it: the CIFAR-10 binary reader on a
  folder of fake batch files written here, the images moved once to the training device (without
  loader workers), the seeded epoch order and batched transforms (``training.order``), and
  ``training.loop.train_epoch`` with ``MaskEnforcer``;
- ``plain``: the paper code's way (naver/force ``train_cifar_tiny_imagenet.py``): a Dataset that
  turns each uint8 image into a PIL image, torchvision ``transforms`` one image at a time in a
  shuffled DataLoader, masks enforced by gradient hooks (``weight.register_hook``).

Only training steps are timed (no evaluation), over ``--images`` images per epoch; repeats
alternate the two sides and medians are compared. ``ratio`` = force images/s / plain images/s
(above 1: force-cli is faster). On a GPU, ``--amp`` and ``--channels-last`` apply to both sides.

    python benchmarks/train_vs_pytorch.py                       # CPU, vgg11, 2048 images, batch 128
    python benchmarks/train_vs_pytorch.py --device cuda --model resnet50 --images 20000 --workers 4 --amp --channels-last
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from force_cli.allocator import keep_freed_memory
from force_cli.data import load_datasets
from force_cli.data.arrays import to_device
from force_cli.models import build_model
from force_cli.pruning.masks import prunable_weights
from force_cli.training.loop import autocast_dtype, train_epoch
from force_cli.training.masking import MaskEnforcer
from force_cli.training.order import epoch_batches

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def write_fake_cifar10(folder: Path, images: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 binary batch files holding ``images`` random training images (5 files, as the real
    one) and a small test file; returns the training (pixels (N, 3, 32, 32), labels)."""
    batches = folder / "cifar10" / "cifar-10-batches-bin"
    batches.mkdir(parents=True)
    rng = np.random.RandomState(seed)
    pixels = rng.randint(0, 256, size=(images, 3, 32, 32)).astype(np.uint8)
    labels = rng.randint(0, 10, size=images).astype(np.uint8)
    for i, part in enumerate(np.array_split(np.arange(images), 5), start=1):
        rows = np.concatenate([labels[part, None], pixels[part].reshape(len(part), -1)], axis=1)
        (batches / f"data_batch_{i}.bin").write_bytes(rows.tobytes())
    (batches / "test_batch.bin").write_bytes(np.zeros((10, 3073), dtype=np.uint8).tobytes())
    return pixels, labels.astype(np.int64)


class PaperStyleCifar(Dataset):
    """torchvision's CIFAR10 ``__getitem__``: a PIL image per sample, then the transforms."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, transform):
        self.images = np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))  # HWC, as torchvision keeps them
        self.labels, self.transform = labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def plain_epoch(model, loader, optimizer, device, amp_dtype, scaler, channels_last) -> None:
    """The paper code's training step: forward, cross-entropy, backward (hooks mask), step."""
    model.train()
    autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype
                else contextlib.nullcontext())
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
    float(loss.detach())  # wait for the device


def mask_by_hooks(model, masks, device) -> None:
    """The paper code's ``apply_prune_mask``: zero the pruned weights once, then mask each weight's
    gradient in a hook registered on it."""
    for name, weight in prunable_weights(model).items():
        mask = masks[name].to(device=device, dtype=weight.dtype)
        weight.data.mul_(mask)
        weight.register_hook(lambda grad, mask=mask: grad.mul(mask))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg11")
    parser.add_argument("--images", type=int, default=2048, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0, help="loader worker processes, both sides")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.99)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--amp", action="store_true", help="autocast (CUDA only)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    malloc = "kept" if keep_freed_memory() else "system"  # as the force command does
    if args.threads:
        torch.set_num_threads(args.threads)
    from torchvision import transforms

    device = torch.device(args.device)
    memory_format = torch.channels_last if args.channels_last else torch.preserve_format
    torch.manual_seed(0)
    initial = build_model(args.model, num_classes=10, in_channels=3, image_size=32)
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(w.shape, generator=g) >= args.sparsity for n, w in prunable_weights(initial).items()}
    amp_dtype = autocast_dtype(args.amp, device)

    with tempfile.TemporaryDirectory() as tmp:
        pixels, labels = write_fake_cifar10(Path(tmp), args.images)
        splits = load_datasets("cifar10", tmp, download=False)
        train_data = to_device(splits.train, device) if args.workers == 0 else splits.train  # as the Trainer does
        paper_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                       transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
        plain_data = PaperStyleCifar(pixels, labels, paper_tf)

        force_model = copy.deepcopy(initial).to(device=device, memory_format=memory_format)
        enforcer = MaskEnforcer(force_model, masks)
        enforcer.apply_()
        plain_model = copy.deepcopy(initial).to(device=device, memory_format=memory_format)
        mask_by_hooks(plain_model, masks, device)
        sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)  # noqa: E731
        optimizers = {"force": sgd(force_model), "plain": sgd(plain_model)}
        scalers = {k: torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None for k in optimizers}
        pin = device.type == "cuda"

        def epoch(kind: str, index: int) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            if kind == "force":
                batches = epoch_batches(train_data, args.batch_size, 0, index, workers=args.workers, device=device)
                train_epoch(force_model, batches, optimizers["force"], enforcer, device=device, amp_dtype=amp_dtype,
                            scaler=scalers["force"], channels_last=args.channels_last, sync_every=1 << 30)
            else:
                loader = DataLoader(plain_data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                    pin_memory=pin, generator=torch.Generator().manual_seed(index))
                plain_epoch(plain_model, loader, optimizers["plain"], device, amp_dtype, scalers["plain"],
                            args.channels_last)
            return time.perf_counter() - start

        epoch("force", 0), epoch("plain", 0)  # warm-up: allocator, kernels, optimizer state
        times = {"force": [], "plain": []}
        for r in range(1, args.repeats + 1):
            for kind in ("force", "plain") if r % 2 else ("plain", "force"):
                times[kind].append(epoch(kind, r))

    rate = {k: args.images / statistics.median(v) for k, v in times.items()}
    print(json.dumps({
        "benchmark": "train_vs_pytorch",
        "model": args.model,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "workers": args.workers,
        "images_per_epoch": args.images,
        "batch_size": args.batch_size,
        "sparsity": args.sparsity,
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else False,
        "channels_last": args.channels_last,
        "force_seconds": [round(t, 3) for t in times["force"]],
        "plain_seconds": [round(t, 3) for t in times["plain"]],
        "force_images_per_second": round(rate["force"], 1),
        "plain_images_per_second": round(rate["plain"], 1),
        "ratio": round(rate["force"] / rate["plain"], 3),
        "malloc": malloc,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
