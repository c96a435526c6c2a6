"""The names of the model and init registries, importable without torch.

``force --help`` and the "unknown model" error need only names; importing the registry itself
(``models/registry.py``) loads torch, which takes seconds. ``MODEL_NAMES`` comes from the
torch-free model catalog (``models/catalog.py``); ``INIT_NAMES`` must list exactly
``INIT_SCHEMES``' names (``models/init.py``), in their order: ``tests/test_startup.py`` compares them.
"""

from __future__ import annotations

from force_cli.models.catalog import MODEL_SPECS
from force_cli.models.trust import is_reference

#: The catalog's model names, in its order (``MODELS`` of models/registry.py holds the same).
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_SPECS)

#: ``INIT_SCHEMES``' names (models/init.py), in registry order; the first is the default.
INIT_NAMES: tuple[str, ...] = ("kaiming-normal", "kaiming-normal-fan-out", "xavier-normal", "orthogonal")

DEFAULT_INIT = INIT_NAMES[0]


def is_model_name(name) -> bool:
    """Whether ``name`` names a model the registry can build: a registry name or a reference."""
    return name in MODEL_NAMES or (isinstance(name, str) and is_reference(name))
