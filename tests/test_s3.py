"""Object storage end to end against a real S3-compatible server on loopback.

Every job runs as a user would run it: the ``avfusion`` command in a subprocess whose
environment has only AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY
set, inputs and outputs all ``s3://`` URLs, run from an empty working directory that
must stay empty (a URL turned into a local path shows up there as a folder ``s3:``).
"""

import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pytest

from avfusion import storage
from avfusion.synth import SynthSpec, make_class_conditional_set
from tests.s3_server import S3Server, clean_env

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def s3():
    server = S3Server().start()
    server.apply_env()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bucket(s3):
    return s3.make_bucket("avf-e2e")


@pytest.fixture(scope="module")
def s3_clips(tmp_path_factory, bucket):
    """18 labelled synthetic clips (6 classes) and their labels CSV, uploaded to S3."""
    root = tmp_path_factory.mktemp("s3clips")
    make_class_conditional_set(
        root, per_class=3, spec=SynthSpec(width=64, height=64, duration=2.0, fps=8, sample_rate=16_000)
    )
    for p in sorted(root.glob("*.mp4")):
        storage.publish_file(str(p), f"{bucket}/clips/{p.name}")
    storage.publish_file(str(root / "labels.csv"), f"{bucket}/labels.csv")
    storage.write_text(f"{bucket}/clip.yaml", "clip:\n  clip_seconds: 2.0\n  frame_size: 64\n")
    storage.write_text(
        f"{bucket}/train.yaml",
        "train:\n  model:\n    embed_dim: 32\n    audio_width: 8\n  workers: 1\n  batch_size: 8\n",
    )
    return sorted(p.stem for p in root.glob("*.mp4"))


@pytest.fixture(scope="module")
def s3_shards(s3, bucket, s3_clips, tmp_path_factory):
    """The clips preprocessed by the command: folder, labels CSV and config all in S3,
    shards written to S3. Returns the shards URL and the command's output."""
    cwd = tmp_path_factory.mktemp("cwd_preprocess")
    out = avfusion(
        s3,
        cwd,
        "preprocess",
        f"{bucket}/clips",
        "--labels",
        f"{bucket}/labels.csv",
        "--out",
        f"{bucket}/shards",
        "--config",
        f"{bucket}/clip.yaml",
        "--shard-size",
        "5",
        "--num-cpus",
        "2",
    )
    assert not _no_url_paths(cwd)
    return f"{bucket}/shards", out


@pytest.fixture(scope="module")
def s3_run(s3, bucket, s3_shards, tmp_path_factory):
    """One epoch trained by the command from the S3 shards into an S3 run folder."""
    cwd = tmp_path_factory.mktemp("cwd_train")
    run = f"{bucket}/run"
    avfusion(
        s3,
        cwd,
        "train",
        s3_shards[0],
        "--out",
        run,
        "--config",
        f"{bucket}/train.yaml",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "2",
    )
    assert not _no_url_paths(cwd)
    return run


def avfusion(s3, cwd, *args, timeout=600, check=True):
    env = clean_env(s3)
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )  # this checkout's code
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [str(BIN / "avfusion"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"avfusion {' '.join(args)} → {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def _no_url_paths(root: Path) -> list[str]:
    """Local paths a URL turned into: ``Path("s3://b/x")`` makes a folder named ``s3:``.
    (Plain ``s3`` folders are legitimate, e.g. inside boto3 in a checkout's .venv.)"""
    return [str(p) for p in root.rglob("*") if p.name.endswith(":")]


def test_storage_listing_is_fresh_and_writes_are_atomic(s3, bucket, tmp_path):
    folder = f"{bucket}/fresh"
    storage.write_text(f"{folder}/a_stats.json", "{}")
    assert [storage.basename(u) for u in storage.list_files(folder, "*_stats.json")] == ["a_stats.json"]
    # Another process (as a Ray task would) adds an object; this process listed before.
    code = f"from avfusion import storage; storage.write_text('{folder}/b_stats.json', '{{}}')"
    subprocess.run([sys.executable, "-c", code], check=True, env=clean_env(s3), cwd=Path(__file__).parents[1])
    assert [storage.basename(u) for u in storage.list_files(folder, "*_stats.json")] == [
        "a_stats.json",
        "b_stats.json",
    ]
    assert storage.exists(f"{folder}/b_stats.json")
    with storage.atomic_file(f"{folder}/x.bin") as tmp:
        Path(tmp).write_bytes(b"x" * 10)
    assert storage.read_bytes(f"{folder}/x.bin") == b"x" * 10
    with pytest.raises(RuntimeError):  # a failed write publishes nothing
        with storage.atomic_file(f"{folder}/y.bin") as tmp:
            Path(tmp).write_bytes(b"partial")
            raise RuntimeError("writer died")
    assert not storage.exists(f"{folder}/y.bin")
    storage.makedirs(f"{bucket}/not/a/dir")  # no-op on object stores, no local folder either
    assert storage.join("s3://b/x/", "y", "z.tar") == "s3://b/x/y/z.tar"
    assert not _no_url_paths(Path.cwd()) and not _no_url_paths(tmp_path)


def test_every_job_reads_and_writes_s3(s3, bucket, s3_clips, s3_shards, s3_run, tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (shards, out), run = s3_shards, s3_run

    # preprocess (the fixture): folder + labels CSV + config all in S3 → a correct manifest on the first run.
    manifest = storage.read_json(f"{shards}/manifest.json")
    assert manifest["num_samples"] == 18 and manifest["num_shards"] == 4, out.stdout
    assert manifest["complete"] is True
    keys = []
    for s in manifest["shards"]:
        with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(f"{shards}/{s['tar']}"))) as tar:
            keys += [
                json.load(tar.extractfile(m))["key"] for m in tar.getmembers() if m.name.endswith(".json")
            ]
    assert sorted(keys) == s3_clips
    assert "INFO" not in out.stdout + out.stderr, "Ray's INFO lines stay in its log files"

    # train from S3 into S3 (the fixture: one epoch), then resume from the S3 checkpoint.
    resumed = avfusion(
        s3,
        cwd,
        "train",
        shards,
        "--out",
        run,
        "--config",
        f"{bucket}/train.yaml",
        "--epochs",
        "2",
        "--steps-per-epoch",
        "2",
    )
    assert f"resumed from {run}/last.pt at epoch 1" in resumed.stdout
    rows = [json.loads(x) for x in storage.read_text(f"{run}/metrics.jsonl").splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for name in ("last.pt", "label_map.json", "curves.png", "ranks/rank0.json"):
        assert storage.exists(f"{run}/{name}"), name
    assert storage.find(f"{run}/tb"), "TensorBoard events uploaded"

    # evaluate: checkpoint and shards from S3, report to S3.
    avfusion(
        s3,
        cwd,
        "evaluate",
        f"{run}/last.pt",
        "--shards",
        shards,
        "--split",
        "test",
        "--conditions",
        "normal,muted_audio",
        "--out",
        f"{bucket}/report",
        "--workers",
        "1",
    )
    report = storage.read_json(f"{bucket}/report/robustness.json")
    assert report["meta"]["n_clips"] == 6
    assert storage.exists(f"{bucket}/report/attention_by_condition.png")

    # label: lists the S3 folder, streams each file to its decode task, Parquet parts in S3.
    avfusion(
        s3,
        cwd,
        "label",
        f"{bucket}/clips",
        f"{bucket}/labels",
        "--checkpoint",
        f"{run}/last.pt",
        "--num-cpus",
        "2",
        "--part-rows",
        "7",
    )
    parts = storage.list_files(f"{bucket}/labels", "part-*.parquet")
    assert len(parts) >= 2
    table = pa.concat_tables([storage.read_parquet(p) for p in parts])  # bytes: see storage.read_parquet
    assert sorted(table.column("key").to_pylist()) == [f"{k}.mp4" for k in s3_clips]
    assert table.column("error_class").null_count == table.num_rows
    again = avfusion(
        s3, cwd, "label", f"{bucket}/clips", f"{bucket}/labels", "--checkpoint", f"{run}/last.pt"
    )
    assert "18 already labelled" in again.stdout

    # predict: one clip and the checkpoint from S3.
    pred = avfusion(
        s3, cwd, "predict", f"{bucket}/clips/{s3_clips[0]}.mp4", "--checkpoint", f"{run}/last.pt", "--json"
    )
    assert json.loads(pred.stdout)["predicted_label"]

    assert sorted(p.name for p in cwd.iterdir()) == [] or not _no_url_paths(cwd), _no_url_paths(cwd)
    assert not _no_url_paths(cwd)


def test_unreadable_shard_stops_training_with_its_name(s3, bucket, s3_shards, tmp_path):
    """A shard listed in the manifest but gone from the store: retried, then a clear error
    naming it, well within the timeout (webdataset's warn_and_continue spun forever)."""
    shards = s3_shards[0]
    broken = f"{bucket}/broken"
    manifest = storage.read_json(f"{shards}/manifest.json")
    for s in manifest["shards"][1:]:
        storage.write_bytes(f"{broken}/{s['tar']}", storage.read_bytes(f"{shards}/{s['tar']}"))
    storage.write_json(f"{broken}/manifest.json", manifest)  # the first shard is missing
    t0 = time.time()
    proc = avfusion(
        s3,
        tmp_path,
        "train",
        broken,
        "--out",
        f"{bucket}/broken-run",
        "--config",
        f"{bucket}/train.yaml",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "50",
        "--workers",
        "0",
        check=False,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"{broken}/{manifest['shards'][0]['tar']}" in proc.stderr
    assert time.time() - t0 < 300


def test_label_retries_rows_with_transient_errors(s3, bucket, s3_clips, s3_run, tmp_path):
    """A listed object that cannot be fetched gets a fetch_error row; the next run
    labels it and replaces that row (one row per file, nothing duplicated)."""
    run = s3_run
    late = f"{bucket}/late/{s3_clips[1]}.mp4"
    listing = f"{bucket}/late-list.txt"
    storage.write_text(listing, f"{bucket}/clips/{s3_clips[0]}.mp4\n{late}\n")
    out = f"{bucket}/late-labels"
    avfusion(s3, tmp_path, "label", listing, out, "--checkpoint", f"{run}/last.pt", "--num-cpus", "2")

    def rows():
        parts = storage.list_files(out, "part-*.parquet")
        table = pa.concat_tables([storage.read_parquet(p) for p in parts])
        return sorted((r["path"], r["error_class"]) for r in table.to_pylist())

    assert rows() == [(f"{bucket}/clips/{s3_clips[0]}.mp4", None), (late, "fetch_error")]
    storage.write_bytes(late, storage.read_bytes(f"{bucket}/clips/{s3_clips[1]}.mp4"))
    again = avfusion(s3, tmp_path, "label", listing, out, "--checkpoint", f"{run}/last.pt", "--num-cpus", "2")
    assert "1 already labelled" in again.stdout and "1 to label" in again.stdout
    assert rows() == [(f"{bucket}/clips/{s3_clips[0]}.mp4", None), (late, None)]


def test_tensorboard_events_reach_s3_every_epoch(s3, bucket, s3_shards, tmp_path):
    """Events for a run in S3 are uploaded as each epoch ends, not once at the end: a
    killed or still-running job shows its curves. Seen here while training still runs."""
    shards, run = s3_shards[0], f"{bucket}/tb-run"
    env = clean_env(s3)
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [
            str(BIN / "avfusion"),
            "train",
            shards,
            "--out",
            run,
            "--config",
            f"{bucket}/train.yaml",
            "--epochs",
            "4",
            "--steps-per-epoch",
            "6",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while not storage.find(f"{run}/tb") and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        events = storage.find(f"{run}/tb")
        still_running = proc.poll() is None
        assert events, proc.stderr.read()[-2000:] if proc.poll() is not None else "no events after 300 s"
        epochs_done = len(storage.read_text(f"{run}/metrics.jsonl").splitlines())
        assert still_running and epochs_done < 4, "events must arrive before the run ends"
        steps = [
            e.step
            for e in _events(storage.read_bytes(events[0]))
            for v in e.summary.value
            if v.tag == "val_top1"
        ]
        assert steps and steps == list(range(len(steps))), (
            "the first epochs' scalars are in the uploaded events"
        )
    finally:
        proc.kill()
        proc.wait()


def _events(data: bytes) -> list:
    """TensorBoard's record file: [length u64][crc u32][Event proto][crc u32] repeated."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    events, i = [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        event = Event()
        event.ParseFromString(data[i + 12 : i + 12 + n])
        events.append(event)
        i += 12 + n + 4
    return events
