"""The thread count: --threads, $FORCE_THREADS, $OMP_NUM_THREADS, then affinity and cgroup quota."""

from __future__ import annotations

import os

import pytest
import torch
from typer.testing import CliRunner

from force_cli import threads
from force_cli.cli import app
from force_cli.errors import ConfigError


def fake_system(tmp_path, cgroup_lines, files):
    """A /proc/self/cgroup and a /sys/fs/cgroup tree holding ``files`` (relative path -> text)."""
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("\n".join(cgroup_lines) + "\n")
    root.mkdir()
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return proc, root


def test_v2_quota_on_the_cgroup_itself(tmp_path):
    proc, root = fake_system(tmp_path, ["0::/job/step"], {"job/step/cpu.max": "250000 100000\n"})
    assert threads.cgroup_cpu_quota(proc, root) == 2.5


def test_v2_tightest_quota_among_ancestors_wins(tmp_path):
    proc, root = fake_system(tmp_path, ["0::/slurm/job/step"], {
        "cpu.max": "max 100000\n", "slurm/cpu.max": "800000 100000\n",
        "slurm/job/cpu.max": "300000 100000\n", "slurm/job/step/cpu.max": "max 100000\n"})
    assert threads.cgroup_cpu_quota(proc, root) == 3.0


def test_v2_unlimited_and_missing_files_mean_no_quota(tmp_path):
    proc, root = fake_system(tmp_path, ["0::/a"], {"a/cpu.max": "max 100000\n"})
    assert threads.cgroup_cpu_quota(proc, root) is None
    assert threads.cgroup_cpu_quota(tmp_path / "nowhere", root) is None


def test_v2_in_a_container_reads_the_mount_point_when_the_host_path_is_not_there(tmp_path):
    proc, root = fake_system(tmp_path, ["0::/docker/0123abcd"], {"cpu.max": "150000 100000\n"})
    assert threads.cgroup_cpu_quota(proc, root) == 1.5


def test_v1_cfs_quota_and_period(tmp_path):
    proc, root = fake_system(tmp_path, ["4:memory:/x", "2:cpu,cpuacct:/kube/pod1"], {
        "cpu,cpuacct/kube/pod1/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/kube/pod1/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/kube/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/kube/cpu.cfs_period_us": "100000\n"})
    assert threads.cgroup_cpu_quota(proc, root) == 0.5


def test_v1_unlimited_quota_is_none(tmp_path):
    proc, root = fake_system(tmp_path, ["1:cpu:/"], {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert threads.cgroup_cpu_quota(proc, root) is None


@pytest.mark.parametrize("affinity,quota,expected", [(8, None, 8), (8, "250000 100000", 2), (2, "400000 100000", 2),
                                                     (4, "50000 100000", 1)])
def test_available_cores_is_affinity_capped_by_the_quota_rounded_down(tmp_path, monkeypatch, affinity, quota, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    proc, root = fake_system(tmp_path, ["0::/"], {"cpu.max": quota} if quota else {})
    assert threads.available_cores(proc, root) == expected


def test_precedence_flag_then_force_threads_then_omp_then_cores(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 6)
    env = {"FORCE_THREADS": "3", "OMP_NUM_THREADS": "2"}
    assert threads.resolve_threads(5, env) == 5
    assert threads.resolve_threads(None, env) == 3
    assert threads.resolve_threads(None, {"OMP_NUM_THREADS": "2"}) == 2
    assert threads.resolve_threads(None, {"FORCE_THREADS": " "}) == 6
    assert threads.resolve_threads(None, {}) == 6


@pytest.mark.parametrize("flag,env,fragment", [(0, {}, "--threads must be at least 1"),
                                               (None, {"FORCE_THREADS": "two"}, "$FORCE_THREADS must be a positive"),
                                               (None, {"OMP_NUM_THREADS": "-1"}, "$OMP_NUM_THREADS must be at least 1")])
def test_bad_thread_counts_are_config_errors_naming_the_source(flag, env, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("$", r"\$")):
        threads.resolve_threads(flag, env)


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_cli_threads_flag_and_env_set_torch_threads(tmp_path, restore_threads, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(tmp_path / "missing.safetensors"), "--threads", "3"])
    assert result.exit_code == 2 and torch.get_num_threads() == 3  # set before the command failed
    monkeypatch.setenv("FORCE_THREADS", "2")
    runner.invoke(app, ["inspect", str(tmp_path / "missing.safetensors")])
    assert torch.get_num_threads() == 2
    result = runner.invoke(app, ["eval", str(tmp_path / "missing.safetensors"), "--threads", "0"])
    assert result.exit_code == 2 and "--threads must be at least 1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    for command in ("prune", "train", "eval", "inspect", "sweep"):
        assert "--threads" in runner.invoke(app, [command, "--help"]).stdout
