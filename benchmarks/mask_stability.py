"""How stable is a FORCE mask? One exact tie at one step, resolved both ways, and what follows.

Prunes LeNet-300-100 on scikit-learn's digits twice from the same initial weights and batches.
At step ``--tie-step`` the score of the weight ranked just below the threshold is set equal to the
threshold's: an exact tie, as float32 scores produce on real networks. One run keeps both tied
weights (``--ties keep``, the paper code's ``get_mask``), the other keeps exactly the step's count
(``--ties exact``, force-cli's default). Everything else is identical; the script prints, as JSON,
the Jaccard index |A ∩ B| / |A ∪ B| of the two runs' masks after every step, per method and seed.

    PYTHONPATH=. python benchmarks/mask_stability.py --seeds 0 1 2 > stability.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import torch

from force_cli.data import BatchStream, load_datasets
from force_cli.models import build_model
from force_cli.pruning import get_method, prune, register
from force_cli.pruning.criteria import score_function
from force_cli.pruning.masks import kept_for_sparsity
from force_cli.pruning.schedules import kept_counts


def tie_once(method: str, step: int, kt: int) -> str:
    """Register ``METHOD-tied``: the method's score, except that at ``step`` the (kt+1)-th best
    eligible score is raised to equal the kt-th. Returns the new method's name."""
    spec = get_method(method)
    own = score_function(spec)
    calls = {"n": 0}

    def score(ctx, masks):
        scores = own(ctx, masks)
        calls["n"] += 1
        if calls["n"] == step:
            names = list(scores)
            flat = torch.cat([(s if spec.revives else s.masked_fill(~masks[n], float("-inf"))).flatten()
                              for n, s in scores.items()])
            values, positions = torch.topk(flat, kt + 1)
            layer, index = _locate(scores, names, int(positions[kt]))
            scores[layer].view(-1)[index] = values[kt - 1]
        return scores

    name = f"{method}-tied"
    register(dataclasses.replace(spec, name=name, score=score))
    return name


def _locate(scores, names, position):
    for n in names:
        size = scores[n].numel()
        if position < size:
            return n, position
        position -= size
    raise IndexError(position)


def jaccard(a, b) -> float:
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / union


def run(method: str, seed: int, sparsity: float, steps: int, tie_step: int) -> dict:
    splits = load_datasets("digits", val_fraction=0.1, seed=seed)
    torch.manual_seed(seed)
    model = build_model("lenet300", num_classes=10, in_channels=1, image_size=8)
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    counts = kept_counts("exp", total, kept_for_sparsity(total, sparsity), steps, density=1 - sparsity)
    history = {}
    for ties in ("keep", "exact"):
        tied = tie_once(method, tie_step, counts[tie_step - 1])
        masks = []
        prune(model, method=tied, sparsity=sparsity, steps=steps, stream=BatchStream(splits.train, 128, seed=seed),
              seed=seed, ties=ties, on_step=lambda info: masks.append((info.kept, info.masks)))
        history[ties] = masks
    return {
        "method": method, "seed": seed, "sparsity": sparsity, "steps": steps, "tie_step": tie_step,
        "kept_keep": [k for k, _ in history["keep"]], "kept_exact": [k for k, _ in history["exact"]],
        "jaccard": [round(jaccard(a, b), 6) for (_, a), (_, b) in zip(history["keep"], history["exact"])],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["force", "iter-snip"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--sparsity", type=float, default=0.995)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--tie-step", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for method in args.methods:
        for seed in args.seeds:
            print(json.dumps(run(method, seed, args.sparsity, args.steps, args.tie_step)), flush=True)
            print(f"done {method} seed {seed}", file=sys.stderr)


if __name__ == "__main__":
    main()
