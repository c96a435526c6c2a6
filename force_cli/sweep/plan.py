"""A sweep's plan: the cells of a recipe's method × sparsity × seed grid (with its ablations and
dense reference), each cell's `force prune` settings, and every check that needs no data, made
before any folder is created or any cell runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from force_cli.config import PruneConfig, Recipe, SweepSettings, TrainSettings, resolve
from force_cli.errors import ConfigError, OutputError
from force_cli.pruning.ablation_names import check_ablation
from force_cli.pruning.budgets import check_budget
from force_cli.pruning.checks import validate
from force_cli.pruning.methods import get_method
from force_cli.sweep.results import cell_key
from force_cli.training.settings import complete_settings


@dataclass(frozen=True)
class Cell:
    method: str
    sparsity: float
    seed: int
    ablation: str | None = None  # a sanity check applied to the method's mask (pruning/ablation.py)
    budget: str | None = None  # this cell's --budget, from METHOD@BUDGET in the recipe (None: the prune: one)

    @property
    def label(self) -> str:
        """The method as the results table shows it: ``force``, ``random@erk`` with a budget of its
        own, ``force+reinit`` for an ablation."""
        return self.method + (f"@{self.budget}" if self.budget else "") + (f"+{self.ablation}" if self.ablation else "")

    @property
    def key(self) -> str:
        return cell_key(self.label, self.sparsity, self.seed)  # the label: a results line's 'method'


def sweep_settings(recipe: Recipe) -> SweepSettings:
    if "sweep" not in recipe.sections:
        raise ConfigError(f"{recipe.path}: no 'sweep:' section; add one with methods, sparsities and seeds")
    return SweepSettings(**recipe.sections["sweep"])


def expand_grid(settings: SweepSettings) -> list[Cell]:
    """All cells, seed-major: after the first seed's pass every method and sparsity has a result."""
    if not settings.methods or not settings.sparsities or not settings.seeds:
        raise ConfigError("a sweep needs at least one method, one sparsity and one seed")
    unique = lambda xs: list(dict.fromkeys(xs))  # noqa: E731 - keep the recipe's order, drop repeats
    methods = {entry: _method_and_budget(entry) for entry in unique(settings.methods)}
    for s in settings.sparsities:
        if not 0.0 <= s < 1.0:
            raise ConfigError(f"sweep sparsity {s} is outside [0, 1)")
    for a in settings.ablations:
        check_ablation(a)
    for m in settings.ablated_methods:
        if m not in settings.methods:
            raise ConfigError(f"sweep ablated_methods names '{m}', which is not one of the sweep's methods "
                              f"({', '.join(settings.methods)}); add it to methods or drop it")
    ablated = set(settings.ablated_methods or settings.methods)
    cells = []
    for seed in unique(settings.seeds):
        if settings.dense:
            cells.append(Cell(DENSE, 0.0, int(seed)))
        for s in unique(settings.sparsities):
            for entry, (m, budget) in methods.items():
                cells.append(Cell(m, float(s), int(seed), budget=budget))
                if entry in ablated:
                    cells += [Cell(m, float(s), int(seed), a, budget) for a in unique(settings.ablations)]
    return cells


def _method_and_budget(entry: str) -> tuple[str, str | None]:
    """``force`` -> (force, None); ``random@erk`` -> (random, erk): a method with a budget of its own."""
    method, _, budget = entry.partition("@")
    get_method(method)
    if budget:
        check_budget(budget)
    return method, budget or None


DENSE = "dense"  # the reference cell of `dense: true`: nothing pruned, trained like the others


def prune_config(recipe: Recipe, cell: Cell) -> PruneConfig:
    """The cell's `force prune` settings. Pruning holds out the validation images of the recipe's
    training, and a collapsed network is recorded (it trains to chance accuracy), not an error."""
    settings = recipe.settings_for("prune")
    train_val = recipe.sections.get("train", {}).get("val_fraction")
    if settings.get("val_fraction") is None and train_val is not None:
        settings["val_fraction"] = train_val
    flags = {"method": cell.method, "sparsity": cell.sparsity, "seed": cell.seed, "allow_disconnected": True,
             "budget": cell.budget}
    if cell.method == DENSE:  # sparsity 0 keeps every weight; a data-free one-shot method needs no batch
        flags["method"] = "magnitude"
    return resolve(PruneConfig, settings, flags)


def check_recipe(recipe: Recipe) -> list[Cell]:
    """Every check of the recipe that needs no data, before any folder is made; the cells."""
    cells = expand_grid(sweep_settings(recipe))
    if recipe.common.get("model") is None:
        raise ConfigError(f"{recipe.path}: no model; add 'model: NAME' at the top level of the recipe")
    cfg = prune_config(recipe, cells[0])
    validate(cfg)  # names and ranges, before any cell starts
    complete_settings(TrainSettings(**recipe.sections.get("train", {})), cfg.dataset)  # the train: section too
    return cells


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder that is a file, or that cannot be created, before any cell runs."""
    if str(out_dir) in ("", "."):
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out '{out_dir}' is a file, not a folder; give a folder for the sweep's results")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError.from_os(exc, out_dir, "sweep folder") from None


def check_jobs(jobs: int) -> None:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be a whole number of worker processes, at least 1, got {jobs!r}")
