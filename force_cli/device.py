"""Turn ``--device auto|cpu|cuda[:N]`` into a torch.device, refusing CUDA where there is none."""

from __future__ import annotations

import re

import torch

from force_cli.errors import DeviceError


def resolve_device(spec: str = "auto") -> torch.device:
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not match:
        raise DeviceError(f"unknown device '{spec}'; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(f"device '{spec}' was asked for but CUDA is not available here; use --device cpu or --device auto")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"device '{spec}' does not exist: this machine has {torch.cuda.device_count()} CUDA device(s); "
            f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", index)
