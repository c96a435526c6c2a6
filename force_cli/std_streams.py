"""stdin, stdout and stderr made safe before the command starts (no torch, no rich: start-up code).

* **A closed stream** (``force prune ... >&-``): Python sets ``sys.stdout`` to None, and the next
  file the command opens takes descriptor 1, so the C libraries' writes to stdout would land in it
  (in a checkpoint being written). Each closed descriptor is opened on ``/dev/null`` first, so what
  would be printed there is discarded, as with ``>/dev/null``; the command's files and exit code
  are what they would have been.
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

