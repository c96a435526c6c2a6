"""How many CPU threads torch may use: the cores this process can really run on, unless told.

torch's default is the machine's core count, which on a shared node, under SLURM or in a
container is more than the process may use; its threads then wait on each other and a run can
take several times longer. Precedence, first found wins: ``--threads``, ``$FORCE_THREADS``,
``$OMP_NUM_THREADS``, then the cores available: the CPU affinity (``taskset``, SLURM's binding)
capped by the cgroup CPU quota (docker ``--cpus``, Kubernetes limits, systemd ``CPUQuota``),
rounded down, at least 1.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from force_cli.errors import ConfigError
from force_cli.safe_text import first_line

ENV_VAR = "FORCE_THREADS"
#: More threads than any machine has cores; beyond it torch fails (2**31 overflows its int) or
#: would try to start that many.
MAX_THREADS = 4096


def requested_threads(flag: int | None, environ: Mapping[str, str] = os.environ) -> int | None:
    """The thread count asked for by ``--threads``, ``$FORCE_THREADS`` or ``$OMP_NUM_THREADS``."""
    if flag is not None:
        return _positive(flag, "--threads")
    for var in (ENV_VAR, "OMP_NUM_THREADS"):
        text = environ.get(var, "").strip()
        if var == "OMP_NUM_THREADS":  # OpenMP allows a list for nested levels ("4,2"): the first is ours
            text = text.split(",")[0].strip()
        if text:
            try:
                return _positive(int(text), f"${var}")
            except ValueError:
                raise ConfigError(f"${var} must be a positive whole number of threads, got '{text}'") from None
    return None


def _positive(value: int, source: str) -> int:
    if value < 1:
        raise ConfigError(f"{source} must be at least 1, got {value}")
    if value > MAX_THREADS:
        raise ConfigError(f"{source} must be at most {MAX_THREADS} threads, got {value}; give the cores to use")
    return value


def resolve_threads(flag: int | None = None, environ: Mapping[str, str] = os.environ) -> int:
    """The thread count to use: the one requested, else the cores this process may use."""
    requested = requested_threads(flag, environ)
    return requested if requested is not None else available_cores()


def apply_threads(flag: int | None = None) -> int:
    """Set torch's intra-op thread count per ``resolve_threads``; return it."""
    import torch  # torch-free start-up: the CLI imports this module for --threads before any tensor

    n = resolve_threads(flag)
    if torch.get_num_threads() != n:
        try:
            torch.set_num_threads(n)
        except (RuntimeError, ValueError, OverflowError) as exc:  # a count this torch cannot take
            first = first_line(exc)
            raise ConfigError(f"torch cannot use {n} threads ({first}); give fewer with --threads") from None
    return n


def available_cores(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs in this process's affinity mask, capped by its cgroup CPU quota (rounded down), >= 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(proc, cgroup_root)
    if quota is not None:
        cores = min(cores, math.floor(quota))
    return max(1, cores)


def cgroup_cpu_quota(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The tightest CPU quota (in CPUs) on this process's cgroup and its ancestors; None if unlimited.

    Reads cgroup v2's ``cpu.max`` or v1's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``. A missing
    or unreadable file means no limit is known: the affinity alone then decides.
    """
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2: one unified hierarchy
            limits += _walk(cgroup_root, path, _v2_limit)
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own mount
            for mount in (controllers, "cpu", "cpu,cpuacct", "cpuacct,cpu"):
                if (cgroup_root / mount).is_dir():
                    limits += _walk(cgroup_root / mount, path, _v1_limit)
                    break
    return min(limits) if limits else None


def _walk(mount: Path, path: str, read_limit) -> list[float]:
    """Limits found in the cgroup's folder and every ancestor up to the mount point.

    Inside a container the cgroup path is often the host's while the mount shows only the
    container's own cgroup; then the mount point itself holds the limit.
    """
    limits = []
    folder = mount / path.strip("/")
    while True:
        limit = read_limit(folder)
        if limit is not None:
            limits.append(limit)
        if folder == mount or mount not in folder.parents:
            break
        folder = folder.parent
    return limits


def _v2_limit(folder: Path) -> float | None:
    try:
        quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100_000)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_limit(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None
