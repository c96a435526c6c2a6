"""Models: the catalog and registry, the architectures, initialisation, and references.

- ``catalog``: every model's ``ModelSpec`` (the one place a model is added), without torch;
  ``sizes``: the architectures' shape tables and minimum input sizes it reads, without torch;
- ``names``: the registries' names, without torch (for ``--help`` and name errors);
- ``registry``: ``MODELS``, ``build_model``, ``check_compatible``;
- ``cifar_resnet``, ``vgg``, ``lenet``: the paper's CIFAR-style architectures; ``imagenet``:
  torchvision's ImageNet ones, imported on first use;
- ``init``: the weight-initialisation schemes (``INIT_SCHEMES``);
- ``refs``: models outside the registry (``torchvision:NAME``, ``package.module:factory``);
  ``trust``: whether such a reference may run its code.

The names below load their submodule on first use (``force_cli.lazy``), so that ``catalog``,
``sizes``, ``names`` and ``trust`` import without torch.
"""

from force_cli.lazy import lazy_exports

__all__ = [
    "DEFAULT_INIT", "INIT_SCHEMES", "MODELS", "ModelSpec",
    "build_model", "check_compatible", "initialize", "model_names",
]

__getattr__, __dir__ = lazy_exports(__name__, {name: "registry" for name in __all__})
