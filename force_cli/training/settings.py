"""Training settings: completing them from the dataset's defaults, the optimizers and the
learning-rate schedules.

The defaults per dataset are a field of the dataset's registry entry (``data/catalog.py``).
Free of torch at import so that ``force train --help`` shows them at once (the optimizer builders
import it when called).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from typing import TYPE_CHECKING

from force_cli.config import TrainSettings, check_int_bounds
from force_cli.data.catalog import train_defaults
from force_cli.errors import ConfigError, UnknownNameError

if TYPE_CHECKING:
    import torch


#: The weights are float32: a learning rate or weight decay above float32's largest value becomes
#: infinite in the optimizer's first step (torch refuses it there with a RuntimeError).
#: torch.finfo(torch.float32).max written out: the largest mantissa (2 - 2**-23) at the largest
#: exponent (2**127); this module is imported for --help and does not import torch.
FLOAT32_MAX = (2 - 2**-23) * 2.0**127

#: Default learning rate when ``--optimizer adam`` is chosen without ``--lr``.
ADAM_DEFAULT_LR = 1e-3


def _build_sgd(params, s: TrainSettings) -> torch.optim.Optimizer:
    import torch  # torch-free start-up: this module is imported for --help

    return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


def _build_adam(params, s: TrainSettings) -> torch.optim.Optimizer:
    import torch  # torch-free start-up: this module is imported for --help

    return torch.optim.Adam(params, lr=s.lr, weight_decay=s.weight_decay)


#: Optimizer registry: name -> (builder, one line for --help).
OPTIMIZERS: dict[str, tuple[Callable, str]] = {
    "sgd": (_build_sgd, "SGD with momentum and L2 weight decay (the paper's)"),
    "adam": (_build_adam, f"Adam with L2 weight decay (lr {ADAM_DEFAULT_LR:g} unless --lr)"),
}


def _multistep(s: TrainSettings, index: int) -> float:
    return s.lr * s.gamma ** sum(1 for m in s.milestones if m <= index)


def _cosine(s: TrainSettings, index: int) -> float:
    return s.lr * 0.5 * (1.0 + math.cos(math.pi * index / s.epochs))


#: Learning-rate schedules: name -> (lr of 0-based epoch index, one line for --help). Each is a
#: pure function of the epoch (torch's MultiStepLR / CosineAnnealingLR in closed form), so a
#: resumed run needs no scheduler object, only the epoch.
LR_SCHEDULES: dict[str, tuple[Callable[[TrainSettings, int], float], str]] = {
    "multistep": (_multistep, "lr x gamma after each milestone epoch"),
    "cosine": (_cosine, "cosine annealing from lr to 0 over the run"),
}


def lr_at(settings: TrainSettings, index: int) -> float:
    """The learning rate of the epoch with 0-based ``index``."""
    return LR_SCHEDULES[settings.lr_schedule][0](settings, index)


def complete_settings(settings: TrainSettings, dataset: str) -> TrainSettings:
    """``settings`` with every ``None`` replaced by ``dataset``'s default, validated."""
    defaults = train_defaults(dataset).as_dict()
    if settings.optimizer == "adam":
        defaults["lr"] = ADAM_DEFAULT_LR
    values = {f.name: getattr(settings, f.name) for f in fields(settings)}
    for name, value in values.items():
        if value is None:
            values[name] = defaults[name]
    values["milestones"] = [int(m) for m in values["milestones"]]
    done = TrainSettings(**values)
    validate_settings(done)
    return done


def validate_settings(s: TrainSettings) -> None:
    """Refuse settings outside their valid range with a message naming the flag."""
    if s.optimizer not in OPTIMIZERS:
        raise UnknownNameError("optimizer", s.optimizer, OPTIMIZERS)
    if s.lr_schedule not in LR_SCHEDULES:
        raise UnknownNameError("lr schedule", s.lr_schedule, LR_SCHEDULES)
    checks = [
        ("epochs", s.epochs >= 1, "at least 1"),
        ("lr", 0 < s.lr <= FLOAT32_MAX, f"a positive number no larger than float32's {FLOAT32_MAX:.4g}"),
        ("momentum", 0 <= s.momentum < 1, "in [0, 1)"),
        ("weight-decay", 0 <= s.weight_decay <= FLOAT32_MAX, f">= 0 and no larger than float32's {FLOAT32_MAX:.4g}"),
        ("gamma", 0 < s.gamma <= 1, "in (0, 1]"),
        ("batch-size", s.batch_size >= 1, "at least 1"),
        ("val-fraction", 0 <= s.val_fraction < 1, "in [0, 1), e.g. 0.1"),
        ("workers", s.workers >= 0, ">= 0"),
        ("save-every", s.save_every >= 0, ">= 0 (0: only when interrupted)"),
    ]
    for f in fields(s):
        check_int_bounds(f.name, getattr(s, f.name))
    for flag, ok, what in checks:
        if not ok:
            raise ConfigError(f"--{flag} must be {what}, got {getattr(s, flag.replace('-', '_'))}")
    if any(m < 1 for m in s.milestones) or list(s.milestones) != sorted(set(s.milestones)):
        raise ConfigError(f"--milestones must be increasing positive epochs such as 150,250, got {s.milestones}")
