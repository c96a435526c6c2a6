"""Saliency objectives: the loss L whose gradients the data-driven criteria score.

The objective is part of each method's definition, and at extreme sparsity it decides whether the
pruned network can still be trained. Two are offered:

- ``true-logit``: L = -(1/B) Σ_b z_b[y_b], minus the mean true-class logit. This is what the FORCE
  paper's code computes (it applies ``F.nll_loss`` to raw logits; its models have no log-softmax).
  Its gradient w.r.t. the logits is -onehot/B: every sample pushes on its own class's logit only,
  whatever the other logits are.
- ``cross-entropy``: L = CE(z / T, y), with a temperature T (1 by default). GraSP's code
  (Wang et al., 2020) uses T = 200.

A temperature applies to ``cross-entropy`` only; with ``true-logit`` it would merely scale every
score by the same factor, which changes no mask.

This module imports no torch (``force prune --help`` lists the objectives and each method's): the
losses take tensors and import torch's functional API when first computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from force_cli.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    import torch


def true_logit(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-mean over the batch of the true-class logit (``F.nll_loss`` on raw logits)."""
    return -logits.gather(1, targets.view(-1, 1)).mean()


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the softmax of ``logits / temperature``."""
    import torch.nn.functional as F  # torch-free start-up: this module is imported for --help

    return F.cross_entropy(logits / temperature if temperature != 1.0 else logits, targets)


#: Objective names accepted by ``--saliency-loss``, with one line of help each.
OBJECTIVES: dict[str, str] = {
    "true-logit": "-mean true-class logit, the FORCE paper code's objective (F.nll_loss on raw logits)",
    "cross-entropy": "cross-entropy of softmax(logits / T); T from --saliency-temperature (default 1)",
}


@dataclass(frozen=True)
class Objective:
    """A resolved saliency objective: its name and, for cross-entropy, its temperature."""

    name: str
    temperature: float = 1.0

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.name == "true-logit":
            return true_logit(logits, targets)
        return cross_entropy(logits, targets, self.temperature)

    def describe(self) -> str:
        if self.name == "cross-entropy" and self.temperature != 1.0:
            return f"cross-entropy at T={self.temperature:g}"
        return self.name


def make_objective(name: str, temperature: float | None = None) -> Objective:
    """Validate a name and temperature; ``temperature=None`` means 1."""
    if name not in OBJECTIVES:
        raise UnknownNameError("saliency loss", name, OBJECTIVES)
    if temperature is None:
        temperature = 1.0
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"--saliency-temperature must be a positive number, got {temperature}; e.g. 200")
    if name == "true-logit" and temperature != 1.0:
        raise ConfigError(
            "--saliency-temperature applies to --saliency-loss cross-entropy only (it would scale every "
            "true-logit score alike and change no mask); drop it or use cross-entropy"
        )
    return Objective(name, float(temperature))
