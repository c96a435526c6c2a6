"""stdin, stdout and stderr made safe before the command starts (no torch, no rich: start-up code).

* **A closed stream** (``force prune ... >&-``): Python sets ``sys.stdout`` to None, and the next
  file the command opens takes descriptor 1, so the C libraries' writes to stdout would land in it
  (in a checkpoint being written). Each closed descriptor is opened on ``/dev/null`` first, so what
  would be printed there is discarded, as with ``>/dev/null``; the command's files and exit code
  are what they would have been.
* **An encoding that cannot represent the text** (``PYTHONIOENCODING=ascii``, a C locale): the
  ``×`` of inspect's shapes or a non-ASCII name from a file would raise UnicodeEncodeError. Such
  characters are written as backslash escapes (``\\xd7``) instead.
"""

from __future__ import annotations

import os
import sys

_STREAMS = ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w"))


def reopen_closed() -> list[str]:
    """Open ``/dev/null`` on each closed standard descriptor; return the names of those it opened."""
    opened = []
    for fd, name, mode in _STREAMS:
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one, once the lower are open
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        setattr(sys, name, open(fd, mode, closefd=False, encoding="utf-8", errors="backslashreplace"))
        opened.append(name)
    return opened


def escape_unencodable() -> None:
    """Write what stdout's and stderr's encoding cannot represent as backslash escapes."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a stream that cannot change now: left as it is
                pass


def prepare() -> None:
    """Both of the above, first thing in the `force` entry point."""
    reopen_closed()
    escape_unencodable()
