"""The preprocess orchestration without Ray: planning, plan identity, retry rounds,
task-failure records, resume, and whole runs on the in-process executor (real PyAV,
real tars, real files)."""

import json
import threading
import time
from dataclasses import replace

import pytest
import webdataset as wds

from avfusion.config import ClipSpec
from avfusion.executor import InProcessExecutor
from avfusion.preprocess.plan import (
    PLAN,
    PlanMismatch,
    check_plan,
    label_map_of,
    plan_digest,
    plan_shards,
    retry_plan,
    shard_count_for,
    split_shards,
)
from avfusion.preprocess.run import (
    PreprocessError,
    PreprocessJob,
    read_tasks,
    record_task_failure,
    run_preprocess,
)
from avfusion.preprocess.shard import PreprocessConfig
from avfusion.shardstore import read_all_stats, write_stats
from avfusion.sources import ClipTask
from avfusion.synth import SynthSpec, make_class_conditional_set
from shards.manifest import Failure, ShardStats
from tests.corpus import make_mixed_folder

CLIP = ClipSpec(clip_seconds=2.0, frame_size=32)


def _tasks(n, label="dog"):
    return [
        ClipTask(key=f"k{i:03d}", source=f"/data/k{i:03d}.mp4", label=label, split="train") for i in range(n)
    ]


def _keys(folder):
    return sorted(
        s["__key__"] for s in wds.WebDataset(sorted(str(p) for p in folder.glob("*.tar")), shardshuffle=False)
    )


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_class_conditional_set(
        root, per_class=2, spec=SynthSpec(width=48, height=48, duration=2.0, fps=8, sample_rate=16_000)
    )
    return root


def _job(synth, out, **kw):
    cfg = PreprocessConfig(clip=CLIP, shard_size=kw.pop("shard_size", 4), threads_per_task=1)
    return PreprocessJob(input=str(synth), out=str(out), config=cfg, labels=str(synth / "labels.csv"), **kw)


# planning ---------------------------------------------------------------------------


def test_plan_shards_names_and_sizes():
    shards = plan_shards(_tasks(23), 10, prefix="r01-")
    assert list(shards) == ["r01-00000", "r01-00001", "r01-00002"]
    assert [len(v) for v in shards.values()] == [10, 10, 3]
    assert [t.key for v in shards.values() for t in v] == [t.key for t in _tasks(23)]


@pytest.mark.parametrize(
    ("clips", "most", "slots", "sizes"),
    [
        (44, 100, 1, [44]),
        (44, 100, 2, [22, 22]),
        (45, 100, 2, [23, 22]),
        (44, 100, 16, [3] * 12 + [2] * 4),  # one round: every slot busy, none waits for a tail
        (175, 10, 16, [6] * 15 + [5] * 17),  # two rounds of 16 within 10 clips each
        (45, 10, 2, [8, 8, 8, 7, 7, 7]),
        (3, 100, 8, [1, 1, 1]),
        (0, 100, 4, []),
    ],
)
def test_shards_fill_whole_rounds_of_slots_within_shard_size(clips, most, slots, sizes):
    shards = split_shards(_tasks(clips), shard_count_for(clips, most, slots))
    assert [len(v) for v in shards.values()] == sizes
    assert list(shards) == [f"{i:05d}" for i in range(len(sizes))]
    assert [t.key for v in shards.values() for t in v] == [t.key for t in _tasks(clips)]


def test_label_map_is_sorted_and_skips_unlabelled():
    tasks = _tasks(2, "zebra") + _tasks(1, "ant") + [ClipTask(key="u", source="/u.mp4")]
    assert label_map_of(tasks) == {"ant": 0, "zebra": 1}


def test_digest_identity(tmp_path):
    cfg = PreprocessConfig(clip=CLIP, shard_size=10)
    tasks = _tasks(12)
    assert plan_digest(tasks, cfg) == plan_digest(_tasks(12), PreprocessConfig(clip=CLIP, shard_size=10))
    assert plan_digest(tasks[:11], cfg) != plan_digest(tasks, cfg)
    assert plan_digest(tasks, PreprocessConfig(clip=CLIP, shard_size=5)) != plan_digest(tasks, cfg)
    relabelled = tasks[:-1] + [replace(tasks[-1], label="cat", split="train")]
    assert plan_digest(relabelled, cfg) != plan_digest(tasks, cfg)
    mirrored = [replace(t, source="https://mirror.example/" + t.key) for t in tasks]
    assert plan_digest(mirrored, cfg) == plan_digest(tasks, cfg)  # where clips come from is not the plan

    first = check_plan(str(tmp_path), tasks, cfg, slots=lambda: 4)  # 12 clips fill 4 slots
    assert [len(v) for v in first.values()] == [3, 3, 3, 3]

    def no_slots() -> int:
        raise AssertionError("a resume re-planned instead of reading its plan back")

    again = check_plan(str(tmp_path), mirrored, cfg, slots=no_slots)  # same plan: resumes
    assert {n: [t.key for t in v] for n, v in again.items()} == {
        n: [t.key for t in v] for n, v in first.items()
    }
    with pytest.raises(PlanMismatch, match="different clip list"):
        check_plan(str(tmp_path), tasks[:5], cfg)
    with pytest.raises(PlanMismatch):
        check_plan(str(tmp_path), tasks, PreprocessConfig(clip=CLIP, shard_size=3))


def test_a_plan_recorded_before_shard_counts_resumes_with_fixed_size_shards(tmp_path):
    """``_plan.json`` written by an older avfusion holds the size, not the count: its
    shards were ``shard_size`` clips each and the last one shorter; so they stay."""
    cfg = PreprocessConfig(clip=CLIP, shard_size=5)
    tasks = _tasks(12)
    (tmp_path / PLAN).write_text(
        json.dumps({"digest": plan_digest(tasks, cfg), "clips": 12, "shard_size": 5})
    )
    shards = check_plan(str(tmp_path), tasks, cfg, slots=lambda: 8)
    assert [len(v) for v in shards.values()] == [5, 5, 2]


# retry rounds ----------------------------------------------------------------------


def _stats(shard, round_, ok, failed, transient):
    failures = [
        Failure(
            key=k,
            source=f"/data/{k}.mp4",
            kind="rate_limited" if transient[k] else "private",
            transient=transient[k],
            message="m",
            attempts=1,
            label="dog",
        )
        for k in failed
    ]
    return ShardStats(
        shard=shard,
        tar=f"{shard}.tar",
        attempted=len(ok) + len(failed),
        successes=len(ok),
        failed=len(failed),
        bytes=0,
        seconds=0.0,
        round=round_,
        keys=list(ok),
        failures=failures,
    )


def test_retry_transient_only_then_all(tmp_path):
    root, tasks, cfg = str(tmp_path), _tasks(6), PreprocessConfig(clip=CLIP, shard_size=2)
    transient = {"k001": True, "k003": False, "k004": True}
    write_stats(root, _stats("00000", 0, ["k000", "k002", "k005"], ["k001", "k003", "k004"], transient))
    shards, round_ = retry_plan(root, tasks, read_all_stats(root), cfg, include_permanent=False)
    assert round_ == 1
    assert {n: [t.key for t in ts] for n, ts in shards.items()} == {"r01-00000": ["k001", "k004"]}
    recorded = json.loads((tmp_path / "_retry01.json").read_text())
    assert recorded == {"round": 1, "shards": {"r01-00000": ["k001", "k004"]}}

    write_stats(root, _stats("r01-00000", 1, ["k001"], ["k004"], {"k004": True}))
    shards, round_ = retry_plan(root, tasks, read_all_stats(root), cfg, include_permanent=True)
    assert round_ == 2
    assert [t.key for ts in shards.values() for t in ts] == ["k003", "k004"]


def test_interrupted_retry_round_resumes_with_its_own_plan(tmp_path):
    root, tasks, cfg = str(tmp_path), _tasks(8), PreprocessConfig(clip=CLIP, shard_size=2)
    transient = {k: True for k in ("k001", "k002", "k003", "k006")}
    write_stats(root, _stats("00000", 0, ["k000", "k004", "k005", "k007"], list(transient), transient))
    first, _ = retry_plan(root, tasks, read_all_stats(root), cfg, include_permanent=False)
    assert list(first) == ["r01-00000", "r01-00001"]
    # Round 1 is killed after its first shard: k001, k002 succeeded. The failures now
    # differ from those round 1 was planned on, yet the resumed round is round 1 as planned.
    write_stats(root, _stats("r01-00000", 1, ["k001", "k002"], [], {}))
    again, round_ = retry_plan(root, tasks, read_all_stats(root), cfg, include_permanent=True)
    assert round_ == 1
    assert {n: [t.key for t in ts] for n, ts in again.items()} == {
        n: [t.key for t in ts] for n, ts in first.items()
    }
    assert not (tmp_path / "_retry02.json").exists()


def test_task_failure_record_accounts_for_every_clip(tmp_path):
    tasks = _tasks(3) + [ClipTask(key="u", source="/u.mp4")]
    record_task_failure(str(tmp_path), "00004", tasks, 2, OSError("node lost\nsecond line"))
    stats = read_all_stats(str(tmp_path))["00004"]
    assert (stats.attempted, stats.successes, stats.failed, stats.tar, stats.round) == (4, 0, 4, "", 2)
    assert [(f.key, f.kind, f.transient) for f in stats.failures] == [
        (t.key, "task_failed", True) for t in tasks
    ]
    assert stats.failures[0].message == "OSError: node lost"
    assert stats.by_class == {"dog": {"failed": 3}, "": {"failed": 1}}
    shards, round_ = retry_plan(
        str(tmp_path),
        tasks,
        read_all_stats(str(tmp_path)),
        PreprocessConfig(shard_size=10),
        include_permanent=False,
    )
    assert round_ == 3 and [t.key for ts in shards.values() for t in ts] == [t.key for t in tasks]


# the executor ------------------------------------------------------------------------


def test_in_process_executor_limits_concurrency_and_returns_failures():
    running, peak, lock = [0], [0], threading.Lock()

    def work(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        if i == 3:
            raise ValueError("three")
        return i * 10

    results = dict(InProcessExecutor(2).map_unordered(work, range(6)))
    assert peak[0] == 2
    assert isinstance(results.pop(3), ValueError)
    assert results == {0: 0, 1: 10, 2: 20, 4: 40, 5: 50}
    assert list(InProcessExecutor().map_unordered(lambda i: -i, [1, 2])) == [(1, -1), (2, -2)]


def test_in_process_shared_object_is_one_per_name():
    ex = InProcessExecutor(3)

    class Tally:
        def __init__(self, start):
            self.n = start

        def add(self, k):
            self.n += k
            return self.n

    tally = ex.shared("tally", Tally, 100)
    assert ex.shared("tally", Tally, 0) is tally
    list(ex.map_unordered(lambda k: ex.shared("tally", Tally, 0).add(k), range(5)))
    assert tally.n == 110 and ex.shared("other", Tally, 0).n == 0


# whole runs, in process ------------------------------------------------------------------


def test_whole_run_in_process(tmp_path, synth, capsys):
    data, labels, bad = make_mixed_folder(tmp_path, synth)
    job = PreprocessJob(
        input=str(data),
        out=str(tmp_path / "s"),
        labels=str(labels),
        config=PreprocessConfig(clip=CLIP, shard_size=5, threads_per_task=2),
    )
    result = run_preprocess(job, InProcessExecutor(2))
    assert result.exit_code == 0 and result.complete
    out = tmp_path / "s"
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 12
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 12 and manifest["complete"] is True
    assert sum(manifest["by_split"].values()) == 12 and len(manifest["label_map"]) == 6
    kinds = {k: (f.kind, f.transient) for k, f in result.failures.items()}
    assert kinds["gone_clip_000007"] == ("missing_file", False)
    for name, kind in bad.items():
        assert kinds[f"bad/{name.rsplit('.', 1)[0]}"] == (kind, False), name
    assert len(kinds) == len(bad) + 1
    for stats_file in out.glob("0*_stats.json"):
        stats = json.loads(stats_file.read_text())
        assert (out / stats["tar"]).stat().st_size == stats["bytes"]
    assert "samples                         12" in capsys.readouterr().out


def test_resume_runs_only_shards_without_stats(tmp_path, synth, capsys):
    job = _job(synth, tmp_path / "s")
    assert run_preprocess(job, InProcessExecutor()).exit_code == 0
    out = tmp_path / "s"
    first = _keys(out)
    (out / "00001_stats.json").unlink()
    (out / ".00000.tar.tmp-0000002a").write_bytes(b"partial")  # how storage names a local temp
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("0000[02].tar")}
    capsys.readouterr()
    assert run_preprocess(job, InProcessExecutor()).exit_code == 0
    assert "3 shards (2 already done)" in capsys.readouterr().out
    assert _keys(out) == first
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("0000[02].tar")} == mtimes
    assert (out / "00001_stats.json").exists() and not list(out.glob(".*.tmp-*"))
    with pytest.raises(PreprocessError, match="different clip list"):
        run_preprocess(_job(synth, out, shard_size=5), InProcessExecutor())


class _NeverStarted(InProcessExecutor):
    """An executor that must not start: on Ray, entering one starts or joins a cluster."""

    def __enter__(self):
        raise AssertionError("the executor was started for a run with nothing to do")


def test_runs_with_nothing_to_do_start_no_executor(tmp_path, synth, capsys):
    out = tmp_path / "s"
    assert run_preprocess(_job(synth, out), InProcessExecutor()).exit_code == 0
    assert run_preprocess(_job(synth, out), _NeverStarted()).exit_code == 0  # finished: resumed
    assert (
        run_preprocess(_job(synth, out, retry_failed=True), _NeverStarted()).exit_code == 0
    )  # nothing failed
    empty = tmp_path / "empty"
    empty.mkdir()
    job = PreprocessJob(input=str(empty), out=str(tmp_path / "e"), config=PreprocessConfig(clip=CLIP))
    assert run_preprocess(job, _NeverStarted()).exit_code == 0  # no clips: nothing to plan for


def test_failed_task_is_recorded_then_retried(tmp_path, synth, capsys):
    """A shard whose task raises (here its tar's name is taken by a folder) ends as
    task_failed rows and an incomplete manifest; --retry-failed then completes it."""
    out = tmp_path / "s"
    (out / "00001.tar").mkdir(parents=True)
    (out / "00001.tar" / "blocker").write_text("x")
    (out / ".avfusion-shards").write_text("")  # our folder (an earlier run's marker), else refused
    result = run_preprocess(_job(synth, out), InProcessExecutor())
    assert result.exit_code == 1 and len(result.lost) == 4
    assert "INCOMPLETE: 4 clips" in capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert (
        manifest["complete"] is False and manifest["task_failed_clips"] == 4 and manifest["num_samples"] == 8
    )
    assert {(f.kind, f.transient) for f in result.failures.values()} == {("task_failed", True)}

    for p in (out / "00001.tar").iterdir():
        p.unlink()
    (out / "00001.tar").rmdir()
    result = run_preprocess(_job(synth, out, retry_failed=True), InProcessExecutor())
    assert result.exit_code == 0 and not result.failures
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["num_samples"] == 12
    assert sorted(s["tar"] for s in manifest["shards"]) == ["00000.tar", "00002.tar", "r01-00000.tar"]
    assert len(_keys(out)) == 12  # the folder is gone, so the listed tars are exactly these


def test_read_tasks_filters_and_reports_missing_rows(tmp_path, synth):
    labels = tmp_path / "labels.csv"
    rows = (synth / "labels.csv").read_text().splitlines()
    labels.write_text("\n".join(rows + ["gone_clip,7,low hum,train"]) + "\n")
    tasks, missing = read_tasks(PreprocessJob(input=str(synth), out="", labels=str(labels)))
    assert len(tasks) == 12 and [m.key for m in missing] == ["gone_clip_000007"]
    kept_label = tasks[0].label
    tasks, missing = read_tasks(
        PreprocessJob(input=str(synth), out="", labels=str(labels), keep_labels=(kept_label,), limit=1)
    )
    assert [t.label for t in tasks] == [kept_label] and missing == []


def test_job_shell_runs_on_the_local_executor(tmp_path, synth, capsys):
    from jobs import preprocess

    args = [
        str(synth),
        "--labels",
        str(synth / "labels.csv"),
        "--out",
        str(tmp_path / "s"),
        "--executor",
        "local",
        "--concurrency",
        "2",
        "--shard-size",
        "5",
        "--frame-size",
        "32",
        "--split",
        "test",
    ]
    assert preprocess.main(args) == 0
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["by_split"] == {"test": manifest["num_samples"]} and manifest["num_samples"] > 0
    assert "already done" in capsys.readouterr().out
    assert preprocess.main([*args[:-2], "--split", "train"]) == 2  # another clip list in the same folder
    assert "different clip list" in capsys.readouterr().err
