"""Measuring helpers: CPU seconds and peak memory of a command's whole process tree.

Both sides of every comparison are measured by ``run_measured``, the same way:

* CPU = user + system seconds of *every* process the command starts, Ray's GCS,
  raylet and worker processes included. Preferred: a cgroup-v1 ``cpuacct`` group
  made for the command (``/sys/fs/cgroup/cpuacct``, writable when run as root), whose
  ``cpuacct.usage`` counts every task that ever ran in it, however it ended.
  Fallback: this process makes itself a child subreaper (``PR_SET_CHILD_SUBREAPER``)
  and the figure is the growth of ``RUSAGE_CHILDREN`` once every descendant is
  reaped — which misses the children of a parent that ignores ``SIGCHLD`` (Ray's
  raylet reaps its workers that way), so Ray jobs are only fully counted by the
  cgroup. Each run says which it used.
* memory = the peak over time of the summed PSS of the live process tree (sampled
  every 50 ms from ``/proc/PID/smaps_rollup``): proportional set size splits shared
  pages (Ray's object store, mapped by every worker) among the processes sharing
  them, so the sum is what the tree really holds; summed RSS would count them once per
  process. The command's own peak RSS (``VmHWM``) is also kept.
* wall = from launch to the last descendant's exit: start-up is inside every figure,
  on both sides; callers that quote a per-clip cost "at the margin" take the
  difference of two runs of different sizes, again on both sides.

``DeviceTimer`` is the one timer of device work (a window of steps, an augmentation
call): CUDA events where the device is CUDA, the wall clock elsewhere, the device
drained at both ends of each window; it keeps host wall and host CPU apart from it.

``write_results`` is the one writer of a bench's results files (``docs/results/NAME.md``,
``.json``, ``.png``), each headed by the date, the machine and the exact command.
"""

from __future__ import annotations

import ctypes
import datetime
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from avfusion.cpus import cpu_quota, usable_cpus

_METHODS: set[str] = set()
# Every table print_table showed in this process, for the results file (one bench per process).
_TABLES: list[tuple[str, list[tuple], tuple]] = []
RESULTS_DIR = "docs/results"


def accounting() -> str:
    """How the runs so far were measured, for the benchmark's printout."""
    cpu = (
        "a cpuacct cgroup per command (every process that ran in it, Ray workers included)"
        if _METHODS == {"cgroup"}
        else "RUSAGE_CHILDREN of reaped descendants via a child subreaper (no writable cpuacct cgroup "
        "here: children of a parent that ignores SIGCHLD, e.g. Ray workers, are missed)"
        if _METHODS == {"rusage"}
        else f"mixed methods {sorted(_METHODS)}"
    )
    return (
        f"CPU = user+sys of every process in each command's tree, from {cpu}; memory = peak summed PSS "
        f"of the tree (50 ms samples; shared pages split, not counted per process); wall and CPU include "
        f"start-up, on both sides"
    )


@dataclass(frozen=True, kw_only=True)
class Usage:
    cpu_seconds: float
    wall_seconds: float
    max_rss_mb: float  # peak of the summed PSS of all processes of the command (see module doc)
    root_rss_mb: float = 0.0  # peak RSS (VmHWM) of the command's own process
    processes: int = 1  # distinct processes seen in the tree


def _subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class _Memory:
    """What ``_poll_memory`` has seen so far (MB; every descendant pid)."""

    sum: float = 0.0
    root: float = 0.0
    pids: set[int] = field(default_factory=set)


def _poll_memory(root: int, stop: threading.Event, out: _Memory) -> None:
    """Peak of the summed PSS of this process's descendants (the command's tree: we
    run one command at a time), and the command's own VmHWM."""
    me = os.getpid()
    while not stop.is_set():
        tree = _descendants(me)
        out.pids.update(tree)
        out.sum = max(out.sum, sum(_pss_kb(p) for p in tree) / 1024)
        out.root = max(out.root, _status_kb(root, "VmHWM:") / 1024)
        stop.wait(0.05)


CPUACCT = "/sys/fs/cgroup/cpuacct"


def _make_cgroup() -> str | None:
    path = f"{CPUACCT}/avfusion-bench-{os.getpid()}-{time.monotonic_ns()}"
    try:
        os.mkdir(path)
        with open(f"{path}/cpuacct.usage") as f:
            int(f.read())
        return path
    except (OSError, ValueError):
        return None


def _cgroup_pids(path: str) -> list[int]:
    try:
        with open(f"{path}/cgroup.procs") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def run_measured(cmd: list[str], env: dict | None = None, linger: float = 60.0) -> Usage:
    """Run ``cmd`` to completion and account its whole process tree (see module doc).
    Descendants still alive ``linger`` s after the command exits are ended (SIGTERM
    to those PIDs) and still counted."""
    _subreaper()
    group = _make_cgroup()

    def enter_group() -> None:  # in the child, before exec: it and all it starts are counted
        with open(f"{group}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=enter_group if group else None,
    )
    mem, stop = _Memory(), threading.Event()
    poller = threading.Thread(target=_poll_memory, args=(proc.pid, stop, mem), daemon=True)
    poller.start()
    err: list[bytes] = []
    stderr = proc.stderr
    assert stderr is not None  # stderr=PIPE
    reader = threading.Thread(target=lambda: err.append(stderr.read()), daemon=True)
    reader.start()
    status, deadline = None, None
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break  # no child left: the command and every descendant are reaped
        if pid == proc.pid:
            status, deadline = st, time.monotonic() + linger
        if pid == 0:
            if deadline is not None and time.monotonic() > deadline:
                for p in set(_descendants(os.getpid())) | set(_cgroup_pids(group) if group else []):
                    try:
                        os.kill(p, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
                deadline = time.monotonic() + 10
            time.sleep(0.01)
    while group and _cgroup_pids(group):  # processes that left our tree (re-parented elsewhere)
        if deadline is not None and time.monotonic() > deadline + 10:
            for p in _cgroup_pids(group):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    stop.set()
    poller.join()
    reader.join(timeout=5)
    message = (err[0] if err else b"").decode(errors="replace")[-2000:]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc.returncode = os.waitstatus_to_exitcode(status) if status is not None else -1
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {message}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if group:
        with open(f"{group}/cpuacct.usage") as f:
            cpu = int(f.read()) / 1e9
        os.rmdir(group)
        _METHODS.add("cgroup")
    else:
        _METHODS.add("rusage")
    return Usage(
        cpu_seconds=cpu,
        wall_seconds=wall,
        max_rss_mb=mem.sum,
        root_rss_mb=mem.root,
        processes=1 + len(mem.pids),
    )


def bench_device(requested: str) -> Any:
    """The one device a bench runs every side of a comparison on (``auto``, ``cpu``,
    ``cuda``), by ``avfusion.device.choose_device``; one that cannot be had is a
    ``ConfigError`` (the bench's one line)."""
    from avfusion.config import ConfigError
    from avfusion.device import choose_device

    try:
        return choose_device(requested)
    except ValueError as exc:
        raise ConfigError(f"--device: {exc}") from None


class DeviceTimer:
    """Times windows of device work (``with timer: ...``), summed over windows.

    On CUDA, each window starts after ``synchronize`` has drained every stream of the
    device (nothing queued before it is counted) and is bracketed by two timing events
    recorded on the current stream; at its end the host waits on the end event, then
    drains the device again, and only then reads ``elapsed_time``. The events are
    *blocking*: the host thread sleeps while it waits instead of spinning, so
    ``cpu_seconds`` is the host's work, not its waiting. Elsewhere the device is the
    host: ``device_seconds`` is the window's wall clock.

    ``device_seconds``: the device's time (CUDA events; wall clock on the CPU);
    ``wall_seconds``: the host's wall clock, drains included; ``cpu_seconds``: CPU
    time of this process (every thread) inside the windows. ``cuda``: the module
    providing ``Event``, ``current_stream`` and ``synchronize`` (``torch.cuda``; a
    test passes a stand-in)."""

    def __init__(self, device: Any, *, cuda: Any = None) -> None:
        import torch

        self.device = torch.device(device)
        if cuda is None and self.device.type == "cuda":
            cuda = torch.cuda
        self._cuda = cuda
        self.device_seconds = self.wall_seconds = self.cpu_seconds = 0.0
        self.windows = 0
        self._start: Any = None
        self._stream: Any = None
        self._t0 = self._c0 = 0.0

    @property
    def method(self) -> str:
        return "CUDA events" if self._cuda is not None else "wall clock"

    def __enter__(self) -> DeviceTimer:
        if self._cuda is not None:
            self._cuda.synchronize(self.device)
            self._stream = self._cuda.current_stream(self.device)
            self._start = self._cuda.Event(enable_timing=True, blocking=True)
            self._start.record(self._stream)
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            return  # a failed window is not a measurement
        device = None
        if self._cuda is not None:
            end = self._cuda.Event(enable_timing=True, blocking=True)
            end.record(self._stream)
            end.synchronize()
            self._cuda.synchronize(self.device)  # work on other streams (the JPEG decoder's)
            device = self._start.elapsed_time(end) / 1000  # ms
        wall, cpu = time.perf_counter() - self._t0, time.process_time() - self._c0
        self.device_seconds += wall if device is None else device
        self.wall_seconds += wall
        self.cpu_seconds += cpu
        self.windows += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "device": str(self.device),
            "windows": self.windows,
            "device_seconds": self.device_seconds,
            "wall_seconds": self.wall_seconds,
            "cpu_seconds": self.cpu_seconds,
        }


def python_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def print_table(title: str, rows: list[tuple], headers: tuple) -> None:
    """Print a table, and keep it for the results file (``write_results``)."""
    _TABLES.append((title, list(rows), tuple(headers)))
    widths = [max(len(str(h)), *(len(_fmt(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)))
    for r in rows:
        print("  ".join(_fmt(v).ljust(w) for v, w in zip(r, widths, strict=False)))


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() in ("model name", "Model", "Hardware"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine  # not platform.processor(): it runs `uname -p`


def machine() -> dict[str, Any]:
    """What a figure was measured on: CPU model and cores, GPUs, torch and Python."""
    import torch

    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),  # the affinity mask, blind to a cgroup quota
        "cpu_quota": cpu_quota(),  # cgroup CPU quota in CPUs, None: none
        "usable_cpus": usable_cpus(),  # what the jobs size their workers by
        "gpus": gpus,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": f"{os.uname().sysname} {os.uname().release} {os.uname().machine}",
    }


def results_header(name: str, argv: Sequence[str] | None) -> dict[str, Any]:
    """Date, machine and the exact command of a results file. ``argv``: the options the
    bench parsed (``sys.argv`` past the bench name when None)."""
    from avfusion import __version__

    args = list(sys.argv[1:] if argv is None else argv)
    return {
        "bench": name,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["avfusion", "bench", name, *args]),
        "avfusion": __version__,
        "machine": machine(),
    }


def _cell(v) -> str:
    return _fmt(v).replace("|", "\\|").replace("\n", " ")


def _markdown(header: dict[str, Any], tables: list[tuple[str, list[tuple], tuple]]) -> str:
    m = header["machine"]
    lines = [
        f"# avfusion bench {header['bench']}",
        "",
        f"Written by `{header['command']}`; re-run it to update this file, never edit it by hand.",
        "",
        "| | |",
        "|---|---|",
        f"| date (UTC) | {header['date']} |",
        f"| command | `{header['command']}` |",
        f"| CPU | {_cell(m['cpu'])}, {m['cores']} cores ({m['usable_cores']} usable) |",
        f"| GPU | {_cell(', '.join(m['gpus']) or 'none')} |",
        f"| torch / Python | {m['torch']} / {m['python']} |",
        f"| platform | {_cell(m['platform'])} |",
        f"| avfusion | {header['avfusion']} |",
    ]
    for title, rows, headers in tables:
        lines += [
            "",
            f"## {title}",
            "",
            "| " + " | ".join(_cell(h) for h in headers) + " |",
            "|" + "---|" * len(headers),
        ]
        lines += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_results(
    name: str,
    argv: Sequence[str] | None,
    *,
    data: Any = None,
    plot: Callable[[str], None] | None = None,
    results_dir: str = RESULTS_DIR,
) -> list[str]:
    """The one writer of benchmark results: ``<results_dir>/<name>.md`` (the header and
    every table this process printed), ``<name>.json`` (``{"header", "results": data}``)
    when ``data`` is given, ``<name>.png`` when ``plot`` (called with a local path to
    write) is. Through ``avfusion.storage``, so a URL works as well as a folder; returns
    what it wrote."""
    from avfusion import storage

    header = results_header(name, argv)
    storage.makedirs(results_dir)
    written = [storage.join(results_dir, f"{name}.md")]
    storage.write_text(written[0], _markdown(header, _TABLES))
    if data is not None:
        written.append(storage.join(results_dir, f"{name}.json"))
        storage.write_json(written[-1], {"header": header, "results": data})
    if plot is not None:
        written.append(storage.join(results_dir, f"{name}.png"))
        with storage.atomic_file(written[-1]) as local:
            plot(local)
    return written


def build_shards(clips_dir, labels_csv, out, clip, shard_size: int = 16, all_train: bool = False) -> str:
    """Preprocess a labelled folder into shards with the preprocess job's own run, on the
    in-process executor (no Ray: benchmarks measure the model, not the cluster).
    ``all_train``: every clip in the train split (the labels are rewritten beside ``out``)."""
    from pathlib import Path

    from avfusion.executor import InProcessExecutor
    from avfusion.preprocess.run import PreprocessJob, run_preprocess
    from avfusion.preprocess.shard import PreprocessConfig

    out = Path(out)
    if all_train:
        labels_csv = _all_train(labels_csv, out.with_name(out.name + "_labels.csv"))
    job = PreprocessJob(
        input=str(clips_dir),
        out=str(out),
        labels=str(labels_csv),
        config=PreprocessConfig(clip=clip, shard_size=shard_size),
    )
    if not run_preprocess(job, InProcessExecutor()).complete:
        raise RuntimeError(f"preprocessing {clips_dir} into {out} left it incomplete")
    return str(out)


def _all_train(labels_csv, dst) -> str:
    import csv
    import io

    from avfusion import storage
    from avfusion.sources import read_vggsound_csv

    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(
        (r.youtube_id, r.start, r.label, "train") for r in read_vggsound_csv(str(labels_csv))
    )
    storage.write_text(str(dst), text.getvalue())
    return str(dst)
