"""Whether a model name is a reference, whether building it runs code, and whether the user trusts it.

Importing a module runs its code. Naming one on the command line (``force prune --model``) is the
user's choice; a checkpoint naming one is rebuilt only under ``trusted_model_code()`` (the CLI's
``--trust-model-code``), so that opening an untrusted file never runs code. Kept apart from
``refs.py`` (which builds references, with torch) so that the CLI can set the trust without
loading torch.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar

from force_cli.errors import CheckpointError

TORCHVISION = "torchvision"

# True: every import path; a frozenset: only those references
_trusted: ContextVar[bool | frozenset[str]] = ContextVar("force_cli_trust_model_code", default=False)


def is_reference(name: str) -> bool:
    """Whether ``name`` is meant as a reference rather than a registry name (it contains ':')."""
    return ":" in name


def runs_code(name: str) -> bool:
    """Whether building ``name`` imports code that a file could choose (any import path)."""
    return is_reference(name) and not name.startswith(TORCHVISION + ":")


@contextlib.contextmanager
def trusted_model_code(trust: bool = True, *, only: str | None = None):
    """Within this block, checkpoints that name an import path (or only the reference ``only``) may be rebuilt."""
    token = _trusted.set(frozenset({only}) if trust and only is not None else trust)
    try:
        yield
    finally:
        _trusted.reset(token)


def current_trust() -> bool | frozenset[str]:
    """The trust in force here (True, False, or the references trusted), to hand to a worker process."""
    return _trusted.get()


def adopt_trust(trust: bool | frozenset[str]) -> None:
    """Take on, for the rest of this process, the trust of the process that started it
    (``current_trust()`` there): a sweep worker rebuilds what its parent may, not more."""
    if not (isinstance(trust, bool) or (isinstance(trust, frozenset) and all(isinstance(n, str) for n in trust))):
        raise TypeError(f"a trust setting is True, False or a frozenset of references, not {trust!r}")
    _trusted.set(trust)


def check_trusted(name: str) -> None:
    """Refuse to rebuild a checkpoint's import-path model unless the user opted in."""
    trusted = _trusted.get()
    if runs_code(name) and not (trusted is True or (isinstance(trusted, frozenset) and name in trusted)):
        raise CheckpointError(
            f"the checkpoint's model is '{name}', Python code that would run when it is loaded; "
            f"pass --trust-model-code if you trust this file (trusted_model_code() in the library)"
        )
