"""``usable_cpus``: the affinity mask bounded by the cgroup CPU quota (v1, v2, nested,
none, garbage), read from real files laid out like /sys/fs/cgroup and /proc/self/cgroup,
and from a real cgroup of this machine's kernel when one can be made here."""

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from avfusion.cpus import cpu_quota, usable_cpus

REPO = Path(__file__).resolve().parents[1]
CORES = len(os.sched_getaffinity(0))


def layout(root: Path, cgroup: str | None, files: dict[str, str | bytes]) -> str:
    """``cgroup``: /proc/self/cgroup's text (None: no such file); ``files``: paths under
    sys/fs/cgroup → contents (a folder where the name ends with /)."""
    if cgroup is not None:
        (root / "proc" / "self").mkdir(parents=True)
        (root / "proc" / "self" / "cgroup").write_text(cgroup)
    for name, content in files.items():
        path = root / "sys" / "fs" / "cgroup" / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return str(root)


V2_ROOT = {"cgroup.controllers": "cpuset cpu io memory pids\n"}


def test_no_cgroup_files_is_the_affinity_mask(tmp_path):
    root = layout(tmp_path, None, {})
    assert cpu_quota(root) is None and usable_cpus(root) == CORES
    assert usable_cpus() >= 1


def test_v2_quota_and_max(tmp_path):
    limited = layout(tmp_path / "a", "0::/\n", {**V2_ROOT, "cpu.max": "100000 100000\n"})
    assert cpu_quota(limited) == 1.0 and usable_cpus(limited) == 1
    unlimited = layout(tmp_path / "b", "0::/\n", {**V2_ROOT, "cpu.max": "max 100000\n"})
    assert cpu_quota(unlimited) is None and usable_cpus(unlimited) == CORES
    wide = layout(tmp_path / "c", "0::/\n", {**V2_ROOT, "cpu.max": "6400000 100000\n"})
    assert cpu_quota(wide) == 64.0 and usable_cpus(wide) == CORES  # never above the affinity mask


def test_v2_nested_takes_the_tightest_along_the_path(tmp_path):
    """A pod's quota on its parent, the container's own unlimited: the pod's bounds it;
    a fraction rounds down, never below one."""
    pod = "kubepods.slice/pod1"
    root = layout(
        tmp_path / "a",
        f"0::/{pod}/ctr\n",
        {
            **V2_ROOT,
            "kubepods.slice/cpu.max": "max 100000\n",
            f"{pod}/cpu.max": "150000 100000\n",
            f"{pod}/ctr/cpu.max": "max 100000\n",
        },
    )
    assert cpu_quota(root) == 1.5 and usable_cpus(root) == 1
    half = layout(tmp_path / "b", f"0::/{pod}\n", {**V2_ROOT, f"{pod}/cpu.max": "50000 100000\n"})
    assert cpu_quota(half) == 0.5 and usable_cpus(half) == 1


def test_v2_in_a_hybrid_layout(tmp_path):
    root = layout(
        tmp_path,
        "1:name=systemd:/\n0::/job\n",
        {"unified/cgroup.controllers": "cpu\n", "unified/job/cpu.max": "100000 100000\n"},
    )
    assert cpu_quota(root) == 1.0


def test_v1_cpu_controller(tmp_path):
    """ "N:cpu,cpuacct:/path": the quota under the controller's mount, -1 meaning none;
    a container whose mount's top is its own cgroup (host path in /proc) is read too."""
    nested = layout(
        tmp_path / "a",
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n",
        {
            "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
            "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cpu_quota(nested) == 1.0 and usable_cpus(nested) == 1
    top = layout(
        tmp_path / "b",
        "3:cpu:/kubepods/burstable/pod9/abc\n",
        {"cpu/cpu.cfs_quota_us": "250000\n", "cpu/cpu.cfs_period_us": "100000\n"},
    )
    assert cpu_quota(top) == 2.5
    none = layout(
        tmp_path / "c",
        "4:cpu,cpuacct:/\n",
        {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
    )
    assert cpu_quota(none) is None and usable_cpus(none) == CORES


def test_v1_and_v2_together_take_the_tightest(tmp_path):
    root = layout(
        tmp_path,
        "4:cpu:/a\n0::/b\n",
        {
            "cpu/a/cpu.cfs_quota_us": "300000\n",
            "cpu/a/cpu.cfs_period_us": "100000\n",
            "unified/cgroup.controllers": "\n",
            "unified/b/cpu.max": "200000 100000\n",
        },
    )
    assert cpu_quota(root) == 2.0


@pytest.mark.parametrize(
    "cgroup, files",
    [
        ("0::/\n", {**V2_ROOT, "cpu.max": "banana\n"}),
        ("0::/\n", {**V2_ROOT, "cpu.max": "0 100000\n"}),
        ("0::/\n", {**V2_ROOT, "cpu.max": "100000 0\n"}),
        ("0::/\n", {**V2_ROOT, "cpu.max": b"\xff\xfe 1\n"}),
        ("0::/\n", {**V2_ROOT, "cpu.max/": ""}),  # a folder where the file should be
        ("0::/x\n", {**V2_ROOT, "x/cpu.max": "1e5 1e5\n"}),
        ("4:cpu:/\n", {"cpu/cpu.cfs_quota_us": "many\n", "cpu/cpu.cfs_period_us": "100000\n"}),
        ("4:cpu:/\n", {"cpu/cpu.cfs_quota_us": "100000\n"}),  # no period
        ("garbage\n::\n4:cpu\n0::/../../etc\n", {**V2_ROOT}),
        (b"\x00\xff\n".decode("latin-1"), {**V2_ROOT, "cpu.max": "100000 100000\n"}),
        ("0::/\n", {**V2_ROOT, "cpu.max": "9" * 400 + " 1\n"}),  # no float holds it
    ],
    ids=[
        "word",
        "zero",
        "zero-period",
        "binary",
        "folder",
        "float",
        "v1-word",
        "v1-half",
        "lines",
        "nul",
        "huge",
    ],
)
def test_garbage_falls_back_to_the_affinity_mask(tmp_path, cgroup, files):
    root = layout(tmp_path, cgroup, files)
    assert cpu_quota(root) is None and usable_cpus(root) == CORES


def _cgroup_for_test() -> tuple[Path, str, str] | None:
    """(a new cgroup folder here, its quota file, the quota text) for 0.5 CPUs, on v2 when
    this kernel's v2 hierarchy has the cpu controller, else on v1's cpu mount; None
    when neither can be made (not root, read-only, no cpu controller)."""
    name = f"avf-test-{uuid.uuid4().hex[:8]}"
    base = Path("/sys/fs/cgroup")
    own = {
        line.split(":", 2)[1]: line.split(":", 2)[2]
        for line in Path("/proc/self/cgroup").read_text().split("\n")
        if line.count(":") >= 2
    }
    if (base / "cgroup.controllers").exists() and "" in own:
        parent = base / own[""].lstrip("/")
        if "cpu" in (parent / "cgroup.subtree_control").read_text().split():
            return parent / name, "cpu.max", "50000 100000"
        return None
    for mount in (base / "cpu,cpuacct", base / "cpu"):
        if (mount / "cpu.cfs_quota_us").exists():
            return mount / name, "cpu.cfs_quota_us", "50000"
    return None


@pytest.mark.slow
def test_a_real_cgroup_quota_bounds_a_process_in_it(cli_env):
    """A child cgroup of this machine's kernel with a quota of half a CPU, an unlimited
    cgroup inside it, and a Python process moved into the inner one: it counts one CPU
    (its affinity mask still shows every core), through the real /sys and /proc."""
    made = _cgroup_for_test()
    if made is None:
        pytest.skip(
            "no cgroup with a cpu controller can be made here (not root, read-only or v2 without cpu)"
        )
    outer, quota_file, quota = made
    inner = outer / "inner"
    try:
        outer.mkdir()
        inner.mkdir()
        (outer / quota_file).write_text(quota)
    except OSError as exc:
        for folder in (inner, outer):
            if folder.exists():
                folder.rmdir()
        pytest.skip(f"cannot make a cgroup with a CPU quota here: {exc}")
    try:
        probe = (
            "import os; from avfusion.cpus import cpu_quota, usable_cpus; "
            "print(cpu_quota(), usable_cpus(), len(os.sched_getaffinity(0)))"
        )
        proc = subprocess.run(
            ["sh", "-c", f'echo $$ > "{inner}/cgroup.procs" && exec "$0" -c "$1"', sys.executable, probe],
            env=dict(cli_env, PYTHONPATH=str(REPO)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        inner.rmdir()  # the process has exited: the cgroups are empty
        outer.rmdir()
    assert proc.returncode == 0, proc.stderr
    quota_seen, usable, mask = proc.stdout.split()
    assert (float(quota_seen), int(usable), int(mask)) == (0.5, 1, CORES)


def test_a_fifo_in_place_of_a_cgroup_file_is_no_quota_and_no_hang(tmp_path):
    import os

    root = layout(tmp_path, "0::/\n", dict(V2_ROOT))
    os.mkfifo(tmp_path / "sys" / "fs" / "cgroup" / "cpu.max")
    assert cpu_quota(root) is None and usable_cpus(root) == CORES
