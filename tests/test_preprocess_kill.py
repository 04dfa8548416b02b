"""Killed drivers and killed workers: the job resumes or completes, nothing lost or doubled."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import webdataset as wds

from avfusion.synth import SynthSpec, write_clip

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    spec = SynthSpec(width=640, height=360, fps=30, duration=10.0)
    for i in range(24):
        write_clip(root / f"clip{i:02d}_000000.mp4", spec, seed=i)
    return root


def _start(args, env, out):
    return subprocess.Popen(
        ["avfusion", "preprocess", *args, "--out", str(out)],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _session_pids(session: int) -> list[int]:
    """Live (not zombie) processes of the job's session. Ray puts its workers in process
    groups of their own, so a kill of the driver's group alone leaves them running."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (
                os.getsid(int(entry.name)) == session
                and (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            ):
                pids.append(int(entry.name))
        except (OSError, ProcessLookupError, IndexError):
            continue
    return pids


def _cleanup(proc):
    """Kill the job's whole session (embedded Ray and its workers included) and wait
    until it is gone, so no task in flight lands a shard afterwards."""
    deadline = time.time() + 30
    while (pids := _session_pids(proc.pid)) and time.time() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)


def _keys(out: Path) -> list[str]:
    return [
        s["__key__"] for s in wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False)
    ]


def _wait_for(predicate, timeout, proc):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def test_driver_kill_then_resume_gives_the_uninterrupted_key_set(tmp_path, clips, cli_env):
    args = [str(clips), "--shard-size", "2", "--frame-size", "64", "--concurrency", "1", "--num-cpus", "2"]
    proc = _start(args, cli_env, tmp_path / "killed")
    try:
        started = _wait_for(lambda: len(list((tmp_path / "killed").glob("*_stats.json"))) >= 2, 120, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        _cleanup(proc)  # a task in flight would still land its shard until its worker dies
    assert started, "the run ended before it could be killed"
    done_before = len(list((tmp_path / "killed").glob("*_stats.json")))
    assert 2 <= done_before < 12, "kill must land mid-run"
    assert not (tmp_path / "killed" / "manifest.json").exists()

    resumed = subprocess.run(
        ["avfusion", "preprocess", *args, "--out", str(tmp_path / "killed")],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert f"({done_before} already done)" in resumed.stdout
    clean = subprocess.run(
        ["avfusion", "preprocess", *args, "--out", str(tmp_path / "clean")],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert clean.returncode == 0
    killed_keys, clean_keys = _keys(tmp_path / "killed"), _keys(tmp_path / "clean")
    assert len(killed_keys) == len(set(killed_keys)) == 24
    assert sorted(killed_keys) == sorted(clean_keys)
    leftovers = [p.name for p in (tmp_path / "killed").iterdir() if ".tmp" in p.name]
    assert leftovers == []
    for tar in (tmp_path / "killed").glob("*.tar"):
        assert tar.with_name(tar.stem + "_stats.json").exists()


def _task_workers(session: int) -> list[int]:
    """PIDs in our job's session currently executing a process_shard task."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            if cmd.startswith("ray::process_shard") and os.getsid(int(entry.name)) == session:
                pids.append(int(entry.name))
        except (OSError, ProcessLookupError):
            continue
    return pids


def test_worker_kill_mid_task_is_retried_and_every_clip_lands(tmp_path, clips, cli_env):
    out = tmp_path / "s"
    proc = _start(
        [
            str(clips),
            "--shard-size",
            "6",
            "--frame-size",
            "64",
            "--concurrency",
            "1",
            "--threads",
            "1",
            "--num-cpus",
            "2",
        ],
        cli_env,
        out,
    )
    killed = []
    try:
        found = _wait_for(lambda: bool(_task_workers(proc.pid)), 120, proc)
        if found:
            victim = _task_workers(proc.pid)[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
        output, _ = proc.communicate(timeout=300)
    finally:
        _cleanup(proc)
    assert killed, "no worker was caught mid-task"
    assert proc.returncode == 0, output[-3000:]
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 24
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 24


def test_task_failed_after_retries_is_recorded_and_retried(tmp_path, clips, cli_env):
    """A shard whose Ray task fails after its retries (here: none allowed, worker
    killed) loses nothing in silence: one transient task_failed row per clip, a
    non-zero exit with a one-line summary, a manifest marked incomplete; then
    --retry-failed completes with exactly the uninterrupted key set."""
    import duckdb

    out = tmp_path / "s"
    args = [
        str(clips),
        "--shard-size",
        "6",
        "--frame-size",
        "64",
        "--concurrency",
        "1",
        "--threads",
        "1",
        "--num-cpus",
        "2",
        "--task-retries",
        "0",
    ]
    proc = _start(args, cli_env, out)
    killed = []
    try:
        if _wait_for(lambda: bool(_task_workers(proc.pid)), 120, proc):
            victim = _task_workers(proc.pid)[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
        output, _ = proc.communicate(timeout=300)
    finally:
        _cleanup(proc)
    assert killed, "no worker was caught mid-task"
    assert proc.returncode == 1, output[-3000:]
    summary = [line for line in output.splitlines() if line.startswith("INCOMPLETE:")]
    assert summary == [
        "INCOMPLETE: 6 clips whose Ray task failed after its retries (task_failed): "
        "re-run with --retry-failed"
    ], output[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["task_failed_clips"] == 6
    assert manifest["num_samples"] == 18
    rows = duckdb.sql(f"SELECT key, kind, transient FROM '{out}/failures.parquet'").fetchall()
    assert len(rows) == 6 and {(kind, t) for _, kind, t in rows} == {("task_failed", True)}

    again = subprocess.run(
        ["avfusion", "preprocess", *args, "--out", str(out), "--retry-failed"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["num_samples"] == 24
    listed = []
    for s in manifest["shards"]:
        listed += [x["__key__"] for x in wds.WebDataset(str(out / s["tar"]), shardshuffle=False)]
    assert sorted(listed) == sorted(f"clip{i:02d}_000000" for i in range(24))
    assert duckdb.sql(f"SELECT count(*) FROM '{out}/failures.parquet'").fetchall()[0][0] == 0
