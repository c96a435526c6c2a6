"""Do ``--compile`` and bf16 autocast change results? The demo's run (LeNet-300-100 on digits, FORCE
at 99 %, ``make demo``), trained eagerly and compiled, in fp32 and in bf16, for 3 seeds (JSON + a table).

Each seed is pruned once; the four trainings start from that same checkpoint, so they differ only
in how the training arithmetic is done. force uses bf16 autocast on CUDA only (``--amp``); this
script turns it on for the CPU by overriding ``training.loop.autocast_dtype``, to see its numerics
here: CPU bf16 kernels are not the GPU's, so it is evidence about bf16 rounding, not a GPU figure.

    python benchmarks/digits_compile_bf16.py [--seeds 0,1,2] [--epochs 100] > digits-compile-bf16.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from force_cli.config import PruneConfig, TrainSettings  # noqa: E402
from force_cli.pruning.job import prune_to_checkpoint  # noqa: E402
from force_cli.training import loop  # noqa: E402
from force_cli.training.job import train_checkpoint  # noqa: E402

#: name -> (compile, bf16 autocast)
CONFIGS = {"fp32 eager": (False, False), "fp32 --compile": (True, False),
           "bf16 eager": (False, True), "bf16 --compile": (True, True)}
_autocast_dtype = loop.autocast_dtype


def bf16_on_any_device(amp: bool, device: torch.device):
    return torch.bfloat16 if amp else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="default: digits' 100")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            pruned = Path(tmp) / f"lenet300-digits-{seed}.safetensors"
            prune_to_checkpoint(PruneConfig(model="lenet300", dataset="digits", sparsity=0.99, method="force",
                                            steps=60, seed=seed, device="cpu"), pruned)
            for name in args.configs.split(","):
                compile_, bf16 = CONFIGS[name]
                loop.autocast_dtype = bf16_on_any_device if bf16 else _autocast_dtype
                start = time.perf_counter()
                result = train_checkpoint(pruned, Path(tmp) / "trained.safetensors", overwrite=True, device="cpu",
                                          settings=TrainSettings(epochs=args.epochs, compile=compile_, amp=bf16))
                last = result.history[-1]
                rows.append({"seed": seed, "config": name, "test_acc": last["test_acc"], "val_acc": last["val_acc"],
                             "test_loss": last["test_loss"], "train_loss": last["train_loss"],
                             "seconds": round(time.perf_counter() - start, 1),
                             "load_average": [round(x, 2) for x in os.getloadavg()]})
                print(json.dumps(rows[-1]), flush=True)
    loop.autocast_dtype = _autocast_dtype
    print("\n| run | " + " | ".join(f"seed {s}" for s in args.seeds.split(",")) + " | mean ± std |")
    print("|---|" + "---:|" * (len(args.seeds.split(",")) + 1))
    for name in args.configs.split(","):
        accs = [100 * r["test_acc"] for r in rows if r["config"] == name]
        spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        print(f"| {name} | " + " | ".join(f"{a:.2f}" for a in accs) + f" | {statistics.mean(accs):.2f}{spread} |")


if __name__ == "__main__":
    main()
