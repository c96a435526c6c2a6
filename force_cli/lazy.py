"""Package attributes loaded on first use, so that a torch-free submodule imports without torch.

Importing ``force_cli.pruning.schedules`` runs ``force_cli/pruning/__init__.py`` first; if that
imported the whole package, ``force --help`` would load torch (seconds) to show a list of names.
A package ``__init__`` therefore names what it offers and where it lives, and ``lazy_exports``
imports that submodule when the name is first read (PEP 562), so ``from force_cli.pruning import
prune`` works as before.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps each public name to the
    submodule (relative to the package) that defines it."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        namespace[name] = value  # later reads are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__


def resolve(package: str, reference: str):
    """The object that ``reference`` ("module:name", the module relative to ``package``) names,
    its module imported now: how the torch-free catalogs (models, datasets, export formats) name
    the code that does the work without importing it."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(f"{package}.{module}"), name)
