"""The names of `force ablate`'s sanity checks, with one line each (no torch: for --help and recipes).

What each one does, and how to read it, is ``ablation.py``'s docstring and the README.
"""

from __future__ import annotations

from force_cli.errors import UnknownNameError

ABLATIONS: dict[str, str] = {
    "shuffle-within-layers": "same number of weights per layer, at random positions, initial values there",
    "reinit": "same mask, weights drawn afresh (same architecture and init, another seed)",
    "invert-scores": "pruning re-run with the same settings, keeping the lowest scores at every step",
}


def check_ablation(name: str) -> str:
    if name not in ABLATIONS:
        raise UnknownNameError("ablation", name, ABLATIONS)
    return name
