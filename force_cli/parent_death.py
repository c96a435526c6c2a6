"""Worker processes that die with the process that started them.

A sweep's workers must not outlive a parent killed without a chance to stop them (``kill -9``, the
OOM killer): they would keep training and hold their cells' locks, so that running the same
command again would be refused. On Linux the kernel sends the worker SIGKILL when its parent
ends (``prctl(PR_SET_PDEATHSIG)``, through ctypes); elsewhere a daemon thread compares the
parent's pid with the one the worker started under, once a second. A parent that died before the
worker could ask is noticed at once: the worker's parent pid has already changed.

SIGKILL rather than SIGTERM: the worker must be gone before a re-run looks at its locks. What it
loses is the work since its cell's last partial checkpoint, exactly as if it had been killed too.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
POLL_SECONDS = 1.0


def die_with_parent(parent_pid: int) -> str:
    """Have this process killed when ``parent_pid`` (its parent) ends; return the means used,
    ``"prctl"`` or ``"watchdog"``."""
    means = "prctl" if _kernel_kills_orphan() else "watchdog"
    if means == "watchdog":
        threading.Thread(target=_watch, args=(parent_pid,), daemon=True, name="force-parent-watchdog").start()
    if os.getppid() != parent_pid:  # the parent ended before the kernel or the thread were watching
        os.kill(os.getpid(), signal.SIGKILL)
    return means


def _kernel_kills_orphan() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no libc symbol to be had: fall back to the watchdog
        return False


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)
