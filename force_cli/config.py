"""Typed settings and YAML recipes.

A recipe is a YAML file whose top level holds the settings shared by every command (model,
dataset, seed, data_dir, download, device) and one section per command (``prune:``, ...). Every
key is checked against the dataclass of its section: an unknown key or a wrong type is a
ConfigError naming the key and the file. Precedence: command-line flag > recipe > built-in default.

A recipe is untrusted text. It is read as ``yaml.safe_load`` reads it (plain values only), after its
node graph (composed, nothing constructed yet) is checked: YAML aliases may share a value many
times over ("billion laughs": 600 bytes that stand for gigabytes), so the nodes of the document
with every alias expanded are counted, and more than ``MAX_RECIPE_NODES`` is refused. Values are
named in messages by ``safe_text.brief``, bounded whatever their size.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from force_cli.errors import ConfigError
from force_cli.safe_text import brief, first_line


@dataclass
class CommonSettings:
    """Settings every command shares (top level of a recipe)."""

    model: str | None = None
    dataset: str = "cifar10"
    seed: int = 0
    data_dir: str | None = None
    download: bool = True
    device: str = "auto"


@dataclass
class PruneSettings:
    """The ``prune:`` section of a recipe."""

    method: str = "force"
    sparsity: float | None = None
    steps: int | None = None  # None: the method's default (60 for FORCE, 100 for SynFlow, 1 for one-shot)
    schedule: str = "exp"
    batches: int = 1
    batch_size: int = 128
    init: str = "kaiming-normal"
    # The objective whose gradients the scores use; None: the method's own (see pruning/objectives.py).
    saliency_loss: str | None = None
    saliency_temperature: float | None = None
    # The fraction of the training set that `train` holds out for validation, drawn with the same
    # seed: pruning never sees those images. None: the dataset's training default.
    val_fraction: float | None = None
    # Write a network with no input-to-output path (or an empty output layer) instead of failing.
    allow_disconnected: bool = False
    # Per-layer counts before ranking: global (none), uniform, uniform-plus or erk (pruning/budgets.py).
    budget: str = "global"
    # Scores tied at a step's threshold: "exact" keeps exactly the step's count, "keep" every tied
    # weight too, as the FORCE paper code does (see pruning/ties.py).
    ties: str = "exact"


@dataclass
class PruneConfig(CommonSettings, PruneSettings):
    """Everything `force prune` needs: the shared settings plus the prune section, flattened."""


@dataclass
class SweepSettings:
    """The ``sweep:`` section of a recipe: the grid that `force sweep` runs, prune -> train -> eval per cell."""

    # METHOD or METHOD@BUDGET: a cell with a --budget of its own (random@erk), shown under that name
    methods: list[str] = dataclasses.field(default_factory=lambda: ["force"])
    sparsities: list[float] = dataclasses.field(default_factory=list)
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    title: str = ""  # shown on the results table and plot
    dense: bool = False  # add one unpruned reference cell per seed (method "dense", sparsity 0)
    # Sanity checks (`force ablate`) run beside each cell of ablated_methods (default: every method):
    # shuffle-within-layers, reinit, invert-scores. An ablated cell is labelled METHOD+ABLATION.
    ablations: list[str] = dataclasses.field(default_factory=list)
    ablated_methods: list[str] = dataclasses.field(default_factory=list)


@dataclass
class TrainSettings:
    """The ``train:`` section of a recipe (and the training flags of `force train`).

    ``None`` means "the dataset's default" (its ``DatasetSpec.train`` in ``data/catalog.py``; for CIFAR the
    paper's code: SGD, lr 0.1, momentum 0.9, weight decay 5e-4, batch 128, 350 epochs, lr x0.1
    after epochs 150 and 250, 10% of the training set held out for validation).
    """

    epochs: int | None = None
    optimizer: str | None = None  # sgd | adam
    lr: float | None = None
    momentum: float | None = None  # SGD only
    weight_decay: float | None = None
    lr_schedule: str | None = None  # multistep | cosine
    milestones: list[int] | None = None  # multistep: epochs after which the lr is multiplied by gamma
    gamma: float | None = None
    batch_size: int | None = None
    val_fraction: float | None = None
    augment: bool = True
    workers: int = 0  # 0: in-memory datasets live on the training device (no DataLoader, no pinning)
    amp: bool = False  # autocast on CUDA; ignored on CPU
    channels_last: bool = False
    # torch.compile of the model (CUDA graphs on a GPU); see training/compiled.py. Falls back to eager
    # training, with a warning, where torch.compile cannot run.
    compile: bool = False
    save_every: int = 1  # epochs between partial checkpoints; 0: only when interrupted
    sync_bn: bool = False  # under torchrun on CUDA: SyncBatchNorm (batch statistics over every rank's batch)


#: Inclusive bounds of every integer setting (a recipe key, a flag, or each item of a list).
#: Beyond them a seed overflows torch's generators and a step or epoch count exhausts memory.
INT_BOUNDS: dict[str, tuple[int, int]] = {
    "seed": (0, 2**32 - 1),
    "seeds": (0, 2**32 - 1),
    "steps": (1, 10_000),
    "batches": (1, 100_000),
    "batch_size": (1, 65_536),
    "epochs": (1, 100_000),
    "milestones": (1, 100_000),
    "workers": (0, 256),
    "save_every": (0, 100_000),
}


def exact_text(number: float) -> str:
    """The shortest text that reads back as exactly ``number`` (for names and keys made from settings).

    ``0.9`` stays "0.9" (as ``:g`` printed it, so names made by earlier versions are unchanged),
    but ``0.9000001``, which ``:g`` prints as "0.9" too, is "0.9000001"; ``-0.0`` is "0"."""
    number = float(number) + 0.0  # -0.0 + 0.0 is 0.0
    short = f"{number:g}"
    return short if float(short) == number else repr(number)


def check_int_bounds(key: str, value: Any, where: str = "") -> None:
    """Refuse an integer (or list of integers) outside ``INT_BOUNDS[key]``, naming the key or flag."""
    if key not in INT_BOUNDS or value is None:
        return
    low, high = INT_BOUNDS[key]
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(item, int) and not isinstance(item, bool) and not low <= item <= high:
            name = f"{where}: '{key}'" if where else f"--{key.replace('_', '-')}"
            bound = f"at least {low}" if item < low else f"at most {high}"
            raise ConfigError(f"{name} must be {bound}, got {brief(item)}")


#: Recipe sections and the dataclass that types each. Other commands add theirs here.
SECTIONS: dict[str, type] = {"prune": PruneSettings, "sweep": SweepSettings, "train": TrainSettings}


def _type_name(tp) -> str:
    if typing.get_origin(tp) is None and hasattr(tp, "__name__"):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _matches(value: Any, tp) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return isinstance(value, list) and all(item is Any or _matches(v, item) for v in value)
    if tp is Any:
        return True
    return isinstance(value, tp)


def check_section(data: Any, cls: type, where: str) -> dict[str, Any]:
    """Validate a mapping against ``cls``'s fields; return it with ints promoted where floats are expected."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of settings, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    checked = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}'; known keys are: {', '.join(sorted(known))}")
        if not _matches(value, hints[key]):
            raise ConfigError(
                f"{where}: '{key}' must be {_type_name(hints[key])}, got {brief(value)} ({type(value).__name__})"
            )
        check_int_bounds(key, value, where)
        checked[key] = _plain_zero(float(value) if hints[key] in (float, float | None) and isinstance(value, int)
                                   else value)
    return checked


def _plain_zero(value: Any) -> Any:
    """``-0.0`` as ``0.0`` (a sparsity of -0 is 0, and must be named and recorded so), in lists too."""
    if isinstance(value, float):
        return value + 0.0  # -0.0 + 0.0 is 0.0; every other float is unchanged
    if isinstance(value, list):
        return [_plain_zero(v) for v in value]
    return value


@dataclass
class Recipe:
    path: Path
    common: dict[str, Any]
    sections: dict[str, dict[str, Any]]

    def settings_for(self, section: str) -> dict[str, Any]:
        """The shared settings plus one section's, as a flat dict of the keys the recipe gives."""
        return {**self.common, **self.sections.get(section, {})}


#: Nodes a recipe may stand for with every alias expanded (the shipped recipes have under 100).
MAX_RECIPE_NODES = 10_000


def expanded_nodes(node: yaml.Node, limit: int = MAX_RECIPE_NODES) -> int:
    """The nodes of a composed YAML document with every alias expanded, counted up to just past
    ``limit``: each node is visited once (a shared one's count is remembered), so the count costs
    the size of the file, not of the expansion. A node that contains itself counts as over the limit."""
    sizes: dict[int, int] = {}

    def size(n: yaml.Node) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        sizes[id(n)] = limit + 1  # while counting: a node met again inside itself is unbounded
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [part for pair in n.value for part in pair]
        else:
            children = []
        total = 1
        for child in children:
            total = min(total + size(child), limit + 1)
        sizes[id(n)] = total
        return total

    return size(node) if node is not None else 0


#: Python reads a decimal integer of at most this many digits (``sys.get_int_max_str_digits``).
MAX_INT_DIGITS = 4300
_INT_TAG = "tag:yaml.org,2002:int"


def _long_integer(node: yaml.Node | None) -> yaml.ScalarNode | None:
    """The first integer scalar too long for Python to read, if any (each node visited once)."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n is None or id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, yaml.ScalarNode):
            if n.tag == _INT_TAG and sum(ch.isdigit() for ch in n.value) > MAX_INT_DIGITS:
                return n
        elif isinstance(n, yaml.SequenceNode):
            todo.extend(n.value)
        elif isinstance(n, yaml.MappingNode):
            todo.extend(part for pair in n.value for part in pair)
    return None


def _parse(text: str, path: Path) -> Any:
    """``yaml.safe_load`` of a recipe whose node graph was checked first (see the module docstring):
    the checked graph is the one constructed, so the text is parsed once."""
    loader = yaml.SafeLoader(text)
    try:
        return _construct_checked(loader, loader.get_single_node(), path)
    finally:
        loader.dispose()


def _construct_checked(loader: yaml.SafeLoader, node: yaml.Node | None, path: Path) -> Any:
    if node is None:  # an empty document, as yaml.safe_load reads it
        return None
    if expanded_nodes(node) > MAX_RECIPE_NODES:
        raise ConfigError(f"recipe '{path}' expands, through its YAML aliases (*name), to more than "
                          f"{MAX_RECIPE_NODES:,} values; write the settings out instead")
    long = _long_integer(node)
    if long is not None:
        raise ConfigError(f"recipe '{path}' has an integer of {len(long.value)} characters at line "
                          f"{long.start_mark.line + 1}; numbers in recipes have at most {MAX_INT_DIGITS} digits")
    try:
        return loader.construct_document(node)
    except ValueError as exc:  # a value YAML recognises but Python cannot build (a date such as 2024-13-45)
        first = first_line(exc)
        raise ConfigError(f"recipe '{path}' holds a value that cannot be read ({first}); fix it") from None


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if str(path) == "":
        raise ConfigError("the recipe path is empty; give a YAML file such as recipes/digits-lenet300.yaml")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"recipe '{path}' does not exist; check the path") from None
    except OSError as exc:
        raise ConfigError(f"cannot read recipe '{path}': {exc.strerror}; give a readable YAML file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe '{path}' is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    try:
        data = _parse(text, path)
    except yaml.constructor.ConstructorError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"recipe '{path}' uses a YAML tag that recipes do not allow{where} "
                          f"({exc.problem}); use plain values only") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"recipe '{path}' is not valid YAML{where}; fix the syntax") from None
    except RecursionError:
        raise ConfigError(f"recipe '{path}' is nested too deeply; simplify it") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe '{path}' must be a YAML mapping of settings")
    common_keys = {f.name for f in fields(CommonSettings)}
    common = {k: v for k, v in data.items() if k in common_keys}
    rest = {k: v for k, v in data.items() if k not in common_keys}
    unknown = [k for k in rest if k not in SECTIONS]
    if unknown:
        known = sorted(common_keys | set(SECTIONS))
        raise ConfigError(f"{path}: unknown key '{unknown[0]}'; known keys are: {', '.join(known)}")
    common = check_section(common, CommonSettings, str(path))
    sections = {name: check_section(rest[name] or {}, SECTIONS[name], f"{path}: section '{name}'") for name in rest}
    return Recipe(path=path, common=common, sections=sections)


def resolve(cls: type, recipe: dict[str, Any] | None, flags: dict[str, Any]):
    """Build ``cls`` with precedence flag (when not None) > recipe > the dataclass default."""
    values = {}
    names = {f.name for f in fields(cls)}
    for name in names:
        if flags.get(name) is not None:
            check_int_bounds(name, flags[name])
            values[name] = _plain_zero(flags[name])
        elif recipe and name in recipe:
            values[name] = recipe[name]
    return cls(**values)


def as_dict(settings) -> dict[str, Any]:
    return dataclasses.asdict(settings)
