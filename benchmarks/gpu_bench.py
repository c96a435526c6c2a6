"""The GPU benchmark of issue 17 in one run of at most ~5 minutes: prune, train, CLI, tests (JSON).

Sections, each a list of JSON records in one document (stdout, and ``--output``):

- ``prune``: FORCE at 99.5 % against the same number of bare forward+backward passes (interleaved
  step by step: ``prune_speed.interleaved``), for VGG-19 and ResNet-50 on CIFAR shapes (batch 128,
  T = 60) and torchvision's ResNet-50 on 224x224 (batch 64, T = 10); on CUDA also the peak memory
  above the model of one bare pass and of one prune;
- ``train``: epoch time (training and evaluation, the second epoch; the first holds the
  compilation) of ``force``'s Trainer in fp32, with ``--amp --channels-last`` and with ``--compile``
  on top, against a loop written the paper code's way (``train_vs_pytorch``: PIL images and
  torchvision transforms one at a time in a DataLoader with 1 worker, masks by gradient hooks,
  cuDNN deterministic, fp32; evaluation reading loss and accuracy back every batch), on a fake
  CIFAR-10 folder (random 99.5 % masks, 90 % of the training images trained, 10 % and the test
  set evaluated);
- ``cli``: ``force`` end to end, one process per command, on a fake CIFAR-10 folder (prune, train
  with the speed options, eval, inspect, export) and on a fake image folder (prune, train with
  loader workers, eval);
- ``tests``: the test suite (``pytest -n 8`` where pytest-xdist is installed), within what is left
  of ``--budget``.

The fake data are written by the tests' own writers (``tests/test_data.py``).

    python benchmarks/gpu_bench.py --output gpu-bench.json          # on a GPU: about 5 minutes
    python benchmarks/gpu_bench.py --quick                           # the same code, tiny sizes (a smoke run)
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # force_cli and tests from this checkout

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import prune_speed  # noqa: E402
import train_vs_pytorch  # noqa: E402
from force_cli.config import TrainSettings  # noqa: E402
from force_cli.data import load_datasets  # noqa: E402
from force_cli.models import build_model  # noqa: E402
from force_cli.pruning.masks import prunable_weights  # noqa: E402
from force_cli.errors import TrainingDiverged  # noqa: E402
from force_cli.training.loop import TrainCallbacks, Trainer  # noqa: E402
from force_cli.training.settings import complete_settings  # noqa: E402
from tests.test_data import write_fake_cifar10, write_image_folder  # noqa: E402

SPARSITY = 0.995
#: (registry name, ImageNet-style (224x224), batch, steps) of the prune section.
PRUNE_CASES = [("vgg19", False, 128, 60), ("resnet50", False, 128, 60), ("resnet50", True, 64, 10)]
#: --quick: small networks through the same code (the ImageNet-style one on 32x32 images).
QUICK_PRUNE_CASES = [("lenet5", False, 16, 2), ("lenet300", False, 16, 2), ("resnet18", True, 2, 2)]
#: force's training configurations: the TrainSettings flags each sets.
TRAIN_CONFIGS = {
    "fp32": {},
    "amp_channels_last": {"amp": True, "channels_last": True},
    "amp_channels_last_compile": {"amp": True, "channels_last": True, "compile": True},
}


class Budget:
    """Seconds left of the run's budget."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    @property
    def left(self) -> float:
        return self.end - time.perf_counter()


def guarded(fn, *args, **kwargs):
    """``fn(...)``, or {"error": ...} (traceback on stderr) when it raises: one failed measurement
    must not cost the rest of a GPU session's run."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        traceback.print_exc()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------
# prune
# ------------------------------------------------------------------------------------------------


def prune_case(name: str, imagenet: bool, batch_size: int, steps: int, repeats: int, device: torch.device,
               size: int | None = None) -> dict:
    """FORCE time / bare passes time for one network (``prune_speed``'s interleaved measurement)."""
    torch.manual_seed(0)
    classes = 1000 if imagenet else 10
    size = size or (224 if imagenet else 32)
    model = build_model(name, num_classes=classes, in_channels=3, image_size=size, imagenet_style=imagenet)
    model = model.to(device).train()
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(batch_size, 3, size, size, generator=g).to(device),
             torch.randint(0, classes, (batch_size,), generator=g).to(device))
    prune_speed.interleaved(model, batch, 1, 0.5, "force")  # warm-up: allocator, kernels
    runs = [prune_speed.interleaved(model, batch, steps, SPARSITY, "force") for _ in range(repeats)]
    pruning, bare = [p[0] for p, _ in runs], [b[0] for _, b in runs]
    # 2 steps: the working copy, scores and top-k of a step
    peak = prune_speed.peak_memory(model, batch, 2, SPARSITY, "force", device) if device.type == "cuda" else None
    return {
        "model": name + (f" (ImageNet, {size}x{size})" if imagenet else " (CIFAR)"),
        "batch_size": batch_size, "steps": steps, "sparsity": SPARSITY,
        "bare_seconds": round(statistics.median(bare), 4),
        "prune_seconds": round(statistics.median(pruning), 4),
        "ratio": round(statistics.median(p / b for p, b in zip(pruning, bare)), 3),
        "repeat_ratios": [round(p / b, 3) for p, b in zip(pruning, bare)],
        "peak_mib_bare_pass": None if peak is None else peak["bare"],
        "peak_mib_prune": None if peak is None else peak["prune"],
    }


def prune_section(args, device: torch.device, budget: Budget) -> list[dict]:
    out = []
    for name, imagenet, batch_size, steps in QUICK_PRUNE_CASES if args.quick else PRUNE_CASES:
        if budget.left < 60:
            out.append({"model": name, "skipped": "budget"})
            continue
        out.append({"model": name} | guarded(prune_case, name, imagenet, batch_size, steps, args.repeats, device,
                                             size=32 if args.quick else None))
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    return out


# ------------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------------


def paper_evaluate(model, loader, device) -> float:
    """The paper code's test loop: every batch's loss and correct count read back with .item()."""
    model.eval()
    loss = correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            loss += F.cross_entropy(out, y).item()
            correct += out.argmax(1).eq(y).sum().item()
            total += y.size(0)
    model.train()
    return correct / max(total, 1)


def paper_epochs(initial, masks, train_set, eval_set, device, batch_size, workers, epochs=2) -> list[dict]:
    """Epoch times of the paper code's way: train (``train_vs_pytorch.plain_epoch``) then evaluate."""
    model = copy.deepcopy(initial).to(device)
    train_vs_pytorch.mask_by_hooks(model, masks, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    pin = device.type == "cuda"
    flags = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False  # as the paper code sets them
    records = []
    try:
        for epoch in range(epochs):
            train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers,
                                      pin_memory=pin, generator=torch.Generator().manual_seed(epoch))
            eval_loader = DataLoader(eval_set, batch_size=batch_size, shuffle=False, num_workers=workers,
                                     pin_memory=pin)
            synchronize(device)
            start = time.perf_counter()
            train_vs_pytorch.plain_epoch(model, train_loader, optimizer, device, None, None, False)
            synchronize(device)
            trained = time.perf_counter()
            paper_evaluate(model, eval_loader, device)
            synchronize(device)
            done = time.perf_counter()
            records.append({"epoch": epoch + 1, "seconds": round(done - start, 3),
                            "train_seconds": round(trained - start, 3), "eval_seconds": round(done - trained, 3)})
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags
    return records


def force_epochs(initial, masks, splits, device, batch_size, config: dict, epochs=2) -> dict:
    """force's Trainer for ``epochs`` epochs (no checkpoint files): its per-epoch records."""
    settings = complete_settings(TrainSettings(epochs=epochs, batch_size=batch_size, lr=0.01, save_every=0,
                                               **config), "cifar10")
    trainer = Trainer(copy.deepcopy(initial), masks, splits, settings, seed=0, device=device)
    warnings: list[str] = []
    try:
        history = trainer.run(callbacks=TrainCallbacks(on_warning=warnings.append))
    except TrainingDiverged as exc:
        return {"error": str(exc), "warnings": warnings}
    keys = ("epoch", "seconds", "train_seconds", "eval_seconds", "train_acc")
    result = {"epochs": [{k: r[k] for k in keys} for r in history], "warnings": warnings}
    if trainer.compiled is not None:
        result |= {"compiled_batches": trainer.compiled.compiled_calls, "cuda_graphs": trainer.compiled.cuda_graphs,
                   "compiled_active": trainer.compiled.active}
        try:
            from torch._dynamo.utils import counters

            result["cudagraph_skips"] = sum(counters["inductor"].get(k, 0) for k in counters["inductor"]
                                            if "cudagraph_skip" in k)
        except Exception:  # private counters: report what is there, never fail on them
            pass
    del trainer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def train_section(args, device: torch.device, budget: Budget, tmp: Path) -> list[dict]:
    from torchvision import transforms

    per_file = 40 if args.quick else args.images // 5
    train_labels, train_pixels, test_labels, test_pixels = write_fake_cifar10(tmp / "train-data", per_file)
    splits = load_datasets("cifar10", tmp / "train-data", download=False, val_fraction=0.1, seed=0, augment=True)
    n_train = len(splits.train)
    mean, std = train_vs_pytorch.CIFAR_MEAN, train_vs_pytorch.CIFAR_STD
    paper_train = train_vs_pytorch.PaperStyleCifar(train_pixels[:n_train], train_labels[:n_train].astype(np.int64),
                                                   transforms.Compose([
                                                       transforms.RandomCrop(32, padding=4),
                                                       transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                                       transforms.Normalize(mean, std)]))
    eval_pixels = np.concatenate([train_pixels[n_train:], test_pixels])
    eval_labels = np.concatenate([train_labels[n_train:], test_labels]).astype(np.int64)
    paper_eval = train_vs_pytorch.PaperStyleCifar(eval_pixels, eval_labels, transforms.Compose([
        transforms.ToTensor(), transforms.Normalize(mean, std)]))
    batch_size = 16 if args.quick else 128
    out = []
    for name in args.train_models.split(","):
        if budget.left < 90:
            out.append({"model": name, "skipped": "budget"})
            continue
        torch.manual_seed(0)
        initial = build_model(name, num_classes=10, in_channels=3, image_size=32)
        g = torch.Generator().manual_seed(0)
        masks = {n: torch.rand(w.shape, generator=g) >= SPARSITY for n, w in prunable_weights(initial).items()}
        record = {"model": name + " (CIFAR)", "batch_size": batch_size, "train_images": n_train,
                  "eval_images": len(splits.val) + len(splits.test), "sparsity": SPARSITY,
                  "paper": guarded(paper_epochs, initial, masks, paper_train, paper_eval, device, batch_size,
                                   args.paper_workers)}
        paper = record["paper"]
        for config_name, config in TRAIN_CONFIGS.items():
            result = guarded(force_epochs, initial, masks, splits, device, batch_size, config)
            if "epochs" in result and isinstance(paper, list):
                result["speedup_vs_paper"] = round(paper[-1]["seconds"] / result["epochs"][-1]["seconds"], 3)
            record[config_name] = result
        fp32 = record["fp32"].get("epochs")
        amp = record["amp_channels_last"].get("epochs")
        if fp32 and amp:
            record["amp_over_fp32"] = round(amp[-1]["seconds"] / fp32[-1]["seconds"], 3)
        out.append(record)
        print(json.dumps(record), file=sys.stderr, flush=True)
    return out


# ------------------------------------------------------------------------------------------------
# CLI end to end
# ------------------------------------------------------------------------------------------------


def force_command(argv: list[str], timeout: float) -> dict:
    """One ``force`` command in its own process: exit code, wall seconds, its last stderr line."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "force_cli", *argv], capture_output=True, text=True,
                              env=env, timeout=max(timeout, 1))
        rc, err = done.returncode, done.stderr.strip().splitlines()
    except subprocess.TimeoutExpired:
        rc, err = "timeout", []
    return {"command": "force " + " ".join(argv), "rc": rc, "seconds": round(time.perf_counter() - start, 2),
            **({"stderr": err[-1][:300]} if rc != 0 and err else {})}


def cli_section(args, device: torch.device, budget: Budget, tmp: Path) -> list[dict]:
    cifar, images, out = tmp / "cli-cifar", tmp / "cli-images", tmp / "cli-out"
    out.mkdir()
    write_fake_cifar10(cifar, 20 if args.quick else 2000)
    write_image_folder(images)
    dev = ["--device", str(device)]
    model = "lenet300" if args.quick else "resnet50"
    speed = ["--amp", "--channels-last", "--compile"]
    plan = [
        ["prune", "--model", model, "--dataset", "cifar10", "--data-dir", str(cifar), "--no-download",
         "--sparsity", str(SPARSITY), "--steps", "2" if args.quick else "60", "--batch-size", "16" if args.quick else "128",
         "-o", str(out / "c.safetensors"), "--quiet", *dev],
        ["train", str(out / "c.safetensors"), "-o", str(out / "c-trained.safetensors"), "--epochs", "1",
         "--batch-size", "16" if args.quick else "128", *speed, "--quiet", *dev],
        ["eval", str(out / "c-trained.safetensors"), "--json", "--quiet", *dev],
        *([] if args.quick else [  # --quick: fewer process starts (each imports torch)
            ["inspect", str(out / "c-trained.safetensors"), "--json"],
            ["export", str(out / "c-trained.safetensors"), "--to", "compact", "-o", str(out / "c-compact.safetensors")],
            ["eval", str(out / "c-compact.safetensors"), "--json", "--quiet", *dev]]),
        ["prune", "--model", "resnet18", "--dataset", "imagefolder", "--data-dir", str(images), "--no-download",
         "--sparsity", "0.99", "--steps", "2", "--batch-size", "6", "-o", str(out / "i.safetensors"), "--quiet", *dev],
        ["train", str(out / "i.safetensors"), "-o", str(out / "i-trained.safetensors"), "--epochs", "1",
         "--batch-size", "6", "--workers", "2", "--quiet", *dev],
        *([] if args.quick else [["eval", str(out / "i-trained.safetensors"), "--json", "--quiet", *dev]]),
    ]
    results = []
    for argv in plan:
        if budget.left < 30:
            results.append({"command": "force " + " ".join(argv), "skipped": "budget"})
            continue
        results.append(force_command(argv, budget.left - 20))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


# ------------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------------


def tests_section(args, budget: Budget) -> dict:
    xdist = importlib.util.find_spec("xdist") is not None
    # pyproject's addopts already has -q; -rf lists the failures
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rf", *(["-x"] if args.quick else []),
               *(["-n", str(args.test_workers)] if xdist and args.test_workers > 1 else []), *args.tests.split()]
    timeout = budget.left - 5
    if timeout < 20:
        return {"command": " ".join(command[1:]), "skipped": "budget"}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                              env=os.environ | {"PYTHONPATH": str(ROOT)})
        text, rc = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        text, rc = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or ""), "timeout"
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", text)}
    return {"command": "python " + " ".join(command[1:]), "rc": rc, "seconds": round(time.perf_counter() - start, 1),
            "counts": counts, "failed": re.findall(r"^FAILED (\S+)", text, flags=re.M)[:20]}


# ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run: CPU in about a minute)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--budget", type=float, default=290, help="seconds for the whole run; late sections are skipped")
    parser.add_argument("--sections", default="prune,train,cli,tests")
    parser.add_argument("--repeats", type=int, default=3, help="prune: repeats per network")
    parser.add_argument("--train-models", default=None, help="comma-separated (default vgg19,resnet50; quick: lenet300)")
    parser.add_argument("--images", type=int, default=10000, help="fake CIFAR-10 training images (90 %% trained)")
    parser.add_argument("--paper-workers", type=int, default=None, help="loader workers of the paper-style loop (default: 1, the paper code's; quick: 0)")
    parser.add_argument("--tests", default=None, help="pytest arguments (default: tests; quick: two tests of tests/test_step_counts.py)")
    parser.add_argument("--test-workers", type=int, default=8, help="pytest -n N where pytest-xdist is installed")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON document here")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own; quick: 1)")
    args = parser.parse_args()
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
        os.environ["FORCE_THREADS"] = str(threads)  # the force commands and tests it starts
    args.train_models = args.train_models or ("lenet300" if args.quick else "vgg19,resnet50")
    if args.paper_workers is None:
        args.paper_workers = 0 if args.quick else 1
    args.tests = args.tests or ("tests/test_step_counts.py -k evaluate" if args.quick else "tests")
    if args.quick:
        args.repeats = 1
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    budget, started = Budget(args.budget), time.perf_counter()
    sections = args.sections.split(",")
    report = {
        "benchmark": "gpu_bench", "quick": args.quick,
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory(prefix="force-gpu-bench-") as tmp:
        if "prune" in sections:
            report["prune"] = prune_section(args, device, budget)
        if "train" in sections:
            report["train"] = train_section(args, device, budget, Path(tmp))
        if "cli" in sections:
            report["cli"] = cli_section(args, device, budget, Path(tmp))
        if "tests" in sections:
            report["tests"] = tests_section(args, budget)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=1)
    if args.output is not None:
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
