"""Weight-initialisation schemes, applied after building so every model starts the same way.

Pruning at initialisation scores the initial weights, so the init is part of the experiment:
the schemes are those the FORCE reference code offers, applied as it applies them: each
re-initialises every Conv and Linear *weight* and nothing else. Biases keep the initialisation
their model gave them (PyTorch's default, uniform in ±1/√fan_in, unless the architecture sets its
own, as the paper's CIFAR VGG does for its classifier); norm layers start at weight 1, bias 0.
The schemes draw from the global torch RNG: the caller seeds it (``torch.manual_seed``) for a
reproducible model.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from force_cli.errors import UnknownNameError

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)

# The init registry: name -> function that re-initialises one weight tensor in place.
INIT_SCHEMES: dict[str, Callable] = {
    "kaiming-normal": partial(nn.init.kaiming_normal_, mode="fan_in", nonlinearity="relu"),
    "kaiming-normal-fan-out": partial(nn.init.kaiming_normal_, mode="fan_out", nonlinearity="relu"),
    "xavier-normal": nn.init.xavier_normal_,
    "orthogonal": nn.init.orthogonal_,
}


def initialize(model: nn.Module, scheme: str) -> None:
    """Re-initialise ``model`` in place with the named scheme (see ``INIT_SCHEMES``)."""
    if scheme not in INIT_SCHEMES:
        raise UnknownNameError("init", scheme, INIT_SCHEMES)
    init_weight = INIT_SCHEMES[scheme]
    for module in model.modules():
        if isinstance(module, _WEIGHTED):
            init_weight(module.weight)
        elif isinstance(module, _NORMS) and getattr(module, "weight", None) is not None:
            nn.init.ones_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
