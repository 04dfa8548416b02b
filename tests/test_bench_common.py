"""The benchmarks' accounting counts every process a command starts (not a timed test)."""

import os
import subprocess
import sys

import pytest

from jobs.bench.common import _make_cgroup

pytestmark = pytest.mark.slow


def run_measured_cpu(cmd: list[str]) -> float:
    """``run_measured(cmd).cpu_seconds`` in a fresh interpreter: the measurement reaps
    every child of its process, so it must not share one with earlier tests' children
    (a session's Ray, loader workers)."""
    code = (
        "import sys; from jobs.bench.common import run_measured; "
        "print(run_measured(sys.argv[1:]).cpu_seconds)"
    )
    out = subprocess.run([sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\n"


def test_orphaned_grandchild_cpu_is_counted():
    """The command exits at once; a detached grandchild burns 0.4 CPU-s after it."""
    code = (
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', {BURN!r}], start_new_session=True)\n"
    )
    assert run_measured_cpu([sys.executable, "-c", code]) >= 0.4


@pytest.mark.skipif(not os.path.isdir("/sys/fs/cgroup/cpuacct"), reason="no cgroup-v1 cpuacct here")
def test_children_of_a_parent_ignoring_sigchld_are_counted():
    """Ray's raylet ignores SIGCHLD, so its workers' CPU never reaches RUSAGE_CHILDREN;
    the per-command cpuacct cgroup still counts it."""
    group = _make_cgroup()
    if group is None:
        pytest.skip("cpuacct cgroup not writable")
    os.rmdir(group)
    code = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGCHLD, signal.SIG_IGN)\n"
        "pid = os.fork()\n"
        f"if pid == 0:\n    exec({BURN!r})\n    os._exit(0)\n"
        "time.sleep(1.0)\n"
    )
    assert run_measured_cpu([sys.executable, "-c", code]) >= 0.4
