"""Options shared by several commands, and help texts derived from the registries.

A default or a list of choices shown in ``--help`` is read from where it is decided (the method
registry, the settings dataclasses, the per-dataset training defaults, the export formats), never
restated by hand. Everything imported here is torch-free, so that ``--help`` answers at once.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from force_cli.cli.status import fail
from force_cli.data.catalog import DATASETS
from force_cli.errors import ForceError
from force_cli.models.trust import trusted_model_code
from force_cli.pruning.methods import METHODS
from force_cli.pruning.objectives import OBJECTIVES
from force_cli.threads import apply_threads, resolve_threads


def names(registry) -> str:
    """A registry's names, in its order, for a help text."""
    return ", ".join(registry)


def one_of(registry) -> str:
    """A registry's names as alternatives: 'a, b or c'."""
    *rest, last = list(registry)
    return f"{', '.join(rest)} or {last}" if rest else last


def default(settings: type, name: str) -> Any:
    """The default of field ``name`` of a settings dataclass."""
    return next(f.default for f in dataclasses.fields(settings) if f.name == name)


def flag(name: str, on: bool) -> str:
    """How a --NAME/--no-NAME switch is spelled when ``on`` is its value."""
    return f"--{name}" if on else f"--no-{name}"


def train_default(key: str) -> Any:
    """A training default that every dataset shares (each ``DatasetSpec.train``)."""
    values = {repr(value): value for value in (getattr(spec.train, key) for spec in DATASETS.values())}
    if len(values) != 1:
        raise ValueError(f"the datasets' defaults for '{key}' differ; show them per dataset")
    return next(iter(values.values()))


def steps_help() -> str:
    """--steps: the iterative methods' default step counts, the most common one first."""
    by_steps: dict[int, list[str]] = {}
    for method in METHODS.values():
        if method.iterative:
            by_steps.setdefault(method.default_steps, []).append(method.name)
    common = max(by_steps, key=lambda steps: len(by_steps[steps]))
    others = "".join(f"; {', '.join(methods)} {steps}" for steps, methods in by_steps.items() if steps != common)
    return f"Pruning steps of iterative methods (default: {common}{others})."


def saliency_loss_help() -> str:
    """--saliency-loss: the choices, then each data-driven method's default and why."""
    groups: dict[tuple[str, str], list[str]] = {}
    for m in METHODS.values():
        if m.objective is not None:
            groups.setdefault((m.objective.describe(), m.objective_reason), []).append(m.name)
    defaults = "; ".join(f"{', '.join(methods)}: {objective} ({reason})" for (objective, reason), methods in groups.items())
    return (f"Objective whose gradients the scores use: {names(OBJECTIVES)} (true-logit: minus the mean "
            f"true-class logit). Default: each method's reference code's, i.e. {defaults}.")


def saliency_temperature_help() -> str:
    """--saliency-temperature: the methods whose own temperature is not 1."""
    own = [f"{m.objective.temperature:g} for {m.name}" for m in METHODS.values()
           if m.objective is not None and m.objective.temperature != 1.0]
    return (f"Temperature T of --saliency-loss cross-entropy (default: the method's, {', '.join(own + ['else 1'])}); "
            "given alone it selects cross-entropy.")


def path(text: str) -> Path:
    """A path argument; an empty one (``force train "$(force prune ...)"`` after a failed prune)
    is its own clear error rather than the current folder."""
    if not text.strip():
        raise typer.BadParameter("the path is empty (did the command that should have produced it fail?)")
    return Path(text)


def honours_trust(command):
    """Let the command rebuild a checkpoint's import-path model only when given --trust-model-code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        with trusted_model_code(bool(kwargs.get("trust_model_code"))):
            return command(*args, **kwargs)

    return wrapper


def _threads(value: Optional[int]) -> Optional[int]:
    """Check the thread count while the options are parsed, and set it in torch if torch is loaded
    already; otherwise the command sets it (``apply_threads``) just before it loads torch, once its
    torch-free checks have passed (torch-free start-up)."""
    try:
        resolve_threads(value)
        if "torch" in sys.modules:
            apply_threads(value)
    except ForceError as exc:
        raise fail(str(exc)) from None
    return value


def positive(option: str, value: int) -> int:
    """A count option that must be at least 1 (--batch-size, --repeats), checked before torch loads."""
    if value < 1:
        raise ForceError(f"{option} must be at least 1, got {value}")
    return value


RecipeOpt = Annotated[Optional[Path], typer.Option("--recipe", parser=path, metavar="<path>", help="YAML recipe supplying defaults; flags given here win.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", metavar="", help="No progress bar.")]
JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="Print one JSON document to stdout (for jq).")]
CheckpointArg = Annotated[Path, typer.Argument(parser=path, metavar="CHECKPOINT", help="A force checkpoint (.safetensors).")]
CompactOpt = Annotated[bool, typer.Option("--compact", metavar="", help="Write the compact variant: kept values plus a bit-packed mask or gap codes.")]
TrustOpt = Annotated[bool, typer.Option("--trust-model-code", metavar="", help="Allow a checkpoint whose model is an import path (package.module:factory) to import and run that code.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", metavar="", help="Replace an existing output file.")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", callback=_threads, show_default=False,
    help="CPU threads for torch (default: $FORCE_THREADS, else $OMP_NUM_THREADS, else the cores this process may use: affinity and cgroup quota).")]
