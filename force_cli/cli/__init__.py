"""The `force` command line: one thin module per command over the library, as pip and spaCy do.

- ``app``: the Typer app, one-line usage errors, ``--version``, ``main`` (the entry point);
- ``status``: the exit codes, named once, and the one place that maps errors to them;
- ``console``: stdout for results, stderr for progress, warnings and errors;
- ``options``: shared options, and help texts derived from the registries;
- ``prune``, ``ablate``, ``train``, ``evaluate`` (`force eval`), ``inspect``, ``export``,
  ``sweep``, ``shrink``, ``bench``: one module per command.

Nothing here imports torch until a command needs it (``tests/test_startup.py``).
"""

from force_cli.cli.app import app, main

__all__ = ["app", "main"]
