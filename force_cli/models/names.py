"""The names of the model and init registries, importable without torch.

``force --help`` and the "unknown model" error need only names; importing the registry itself
(``models/registry.py``) loads torch, which takes seconds. These tuples must list exactly the
registries' names, in their order: ``tests/test_startup.py`` compares them with ``MODELS`` and
``INIT_SCHEMES``.
"""

from __future__ import annotations

from force_cli.models.trust import is_reference

#: ``MODELS``' names (models/registry.py), in registry order.
MODEL_NAMES: tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet110", "resnet152",
    "vgg11", "vgg13", "vgg16", "vgg19", "lenet300", "lenet5",
)

#: ``INIT_SCHEMES``' names (models/init.py), in registry order; the first is the default.
INIT_NAMES: tuple[str, ...] = ("kaiming-normal", "kaiming-normal-fan-out", "xavier-normal", "orthogonal")

DEFAULT_INIT = INIT_NAMES[0]


def is_model_name(name) -> bool:
    """Whether ``name`` names a model the registry can build: a registry name or a reference."""
    return name in MODEL_NAMES or (isinstance(name, str) and is_reference(name))
