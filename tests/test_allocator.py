"""The glibc malloc thresholds that keep freed tensor memory in the process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from force_cli import allocator

GLIBC = sys.platform == "linux" and os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")


def test_the_environment_variable_keeps_the_system_settings(monkeypatch):
    monkeypatch.setenv(allocator.ENV_VAR, "system")
    assert allocator.keep_freed_memory() is False


@pytest.mark.skipif(not GLIBC, reason="the thresholds exist only in glibc")
def test_freed_blocks_stay_in_the_process_after_it_is_applied():
    """A step's worth of 1 MiB blocks, freed and allocated again, as a training step does: with
    glibc's defaults the freed heap top (more than twice the largest block) goes back to the
    kernel, and the next round faults every page in again (counted by the kernel); with the
    thresholds set, the blocks come back without faults. Child processes, so that this test
    process keeps its own settings."""
    probe = (
        "import ctypes, resource, sys\n"
        "from force_cli.allocator import keep_freed_memory\n"
        "applied = keep_freed_memory() if sys.argv[1] == 'tuned' else False\n"
        "libc = ctypes.CDLL('libc.so.6'); libc.malloc.restype = ctypes.c_void_p\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "size = 1 << 20\n"
        "def touch():\n"
        "    blocks = [libc.malloc(size) for _ in range(16)]\n"
        "    for p in blocks: ctypes.memset(p, 1, size)\n"
        "    for p in reversed(blocks): libc.free(p)\n"
        "touch(); touch()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(5): touch()\n"
        "print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    )
    faults = {}
    for mode in ("system", "tuned"):
        out = subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True, check=True,
                             env=os.environ | {allocator.ENV_VAR: ""}).stdout.split()
        assert out[0] == str(mode == "tuned")
        faults[mode] = int(out[1])
    pages = 5 * 16 * (1 << 20) // 4096
    assert faults["system"] >= pages // 2  # the blocks were faulted in again
    assert faults["tuned"] < pages // 20  # ... and here it was reused
