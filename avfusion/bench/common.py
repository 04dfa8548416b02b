"""Measuring helpers: CPU seconds and peak RSS of child processes, via ``os.wait4``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass


@dataclass
class Usage:
    cpu_seconds: float
    wall_seconds: float
    max_rss_mb: float


def _peak_rss_mb(pid: int, stop: threading.Event, out: list) -> None:
    """Poll the child's own high-water mark (VmHWM). ``ru_maxrss`` cannot be used:
    Linux carries the parent's peak into an exec'd child's figure."""
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        out[0] = max(out[0], int(line.split()[1]) / 1024)
        except (OSError, ValueError):
            return
        stop.wait(0.002)


def run_measured(cmd: list[str], env: dict | None = None) -> Usage:
    """Run ``cmd`` to completion; its own user+sys CPU time and peak RSS (not ours)."""
    import time

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak, stop = [0.0], threading.Event()
    poller = threading.Thread(target=_peak_rss_mb, args=(proc.pid, stop, peak), daemon=True)
    poller.start()
    _, status, usage = os.wait4(proc.pid, 0)
    stop.set()
    poller.join()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = proc.stderr.read().decode(errors="replace")[-2000:]
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err}")
    proc.stderr.close()
    return Usage(usage.ru_utime + usage.ru_stime, wall, peak[0])


def python_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def print_table(title: str, rows: list[tuple], headers: tuple) -> None:
    widths = [max(len(str(h)), *(len(_fmt(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths)))
    for r in rows:
        print("  ".join(_fmt(v).ljust(w) for v, w in zip(r, widths)))


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def build_shards(clips_dir, labels_csv, out, clip, shard_size: int = 16, all_train: bool = False) -> str:
    """Preprocess a labelled folder into shards in-process (no Ray: benchmarks measure
    the model, not the cluster) and write the manifest."""
    from dataclasses import replace
    from pathlib import Path

    from avfusion.pipeline import PreprocessConfig, process_shard
    from avfusion.sources import scan_folder
    from shards.manifest import build_manifest, read_all_stats, write_json_atomic

    tasks, _ = scan_folder(clips_dir, labels_csv)
    if all_train:
        tasks = [replace(t, split="train") for t in tasks]
    labels = {lab: i for i, lab in enumerate(sorted({t.label for t in tasks if t.label}))}
    cfg = PreprocessConfig(clip=clip, shard_size=shard_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(tasks), shard_size):
        process_shard(f"{i // shard_size:05d}", tasks[i:i + shard_size], cfg, labels, str(out))
    write_json_atomic(str(out / "manifest.json"),
                      build_manifest(read_all_stats(str(out)), labels, {"clip": clip.__dict__}, "bench"))
    return str(out)
