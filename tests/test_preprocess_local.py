"""Preprocess from local files on an embedded Ray: shards, stats, failures, resume."""

import glob
import json
from collections import Counter

import duckdb
import numpy as np
import pytest
import webdataset as wds

from avfusion.synth import SynthSpec, make_class_conditional_set, read_frame_index, write_clip
from jobs import preprocess
from shards.reader import decode_sample
from tests.corpus import make_mixed_folder

pytestmark = pytest.mark.slow


def _keys(out):
    ds = wds.WebDataset(sorted(glob.glob(f"{out}/*.tar")), shardshuffle=False)
    return [json.loads(s["json"])["key"] for s in ds]


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_class_conditional_set(
        root, per_class=3, spec=SynthSpec(width=96, height=96, duration=2.0, fps=8, sample_rate=16_000)
    )
    return root


def test_folder_with_labels_and_malformed_files(tmp_path, synth_folder, ray_local):
    data, labels, expected_bad = make_mixed_folder(tmp_path, synth_folder)
    out = tmp_path / "shards"
    rc = preprocess.main(
        [
            str(data),
            "--labels",
            str(labels),
            "--out",
            str(out),
            "--shard-size",
            "5",
            "--frame-size",
            "64",
            "--num-cpus",
            "2",
        ]
    )
    assert rc == 0
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 18
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == 18 and manifest["by_split"] == {"train": 12, "test": 6}
    assert len(manifest["label_map"]) == 6
    failures = duckdb.sql(f"SELECT key, kind, transient FROM '{out}/failures.parquet'").fetchall()
    by_key = {k: (kind, t) for k, kind, t in failures}
    for name, kind in expected_bad.items():
        assert by_key[f"bad/{name.rsplit('.', 1)[0]}"] == (kind, False), name
    assert by_key["gone_clip_000007"] == ("missing_file", False)
    assert len(failures) == len(expected_bad) + 1
    assert not list(out.glob("*.tmp-*"))
    # Every shard's stats add up and the tars are complete.
    for stats_file in out.glob("0*_stats.json"):
        stats = json.loads(stats_file.read_text())
        assert stats["attempted"] == stats["successes"] + stats["failed"]
        assert (out / stats["tar"]).stat().st_size == stats["bytes"]


def test_samples_hold_what_decode_produced(tmp_path, ray_local):
    clip = write_clip(tmp_path / "in" / "barcode_000000.mp4", SynthSpec(duration=10.0, fps=25))
    out = tmp_path / "shards"
    assert preprocess.main([str(tmp_path / "in"), "--out", str(out), "--frame-size", "96"]) == 0
    (raw,) = list(wds.WebDataset(str(out / "00000.tar"), shardshuffle=False))
    sample = decode_sample(raw)
    assert sample.waveform.shape == (160_000,)
    assert sample.frames.shape == (8, 96, 96, 3)
    assert [read_frame_index(f) for f in sample.frames] == [16, 47, 78, 109, 141, 172, 203, 234]
    assert sample.class_index == -1 and sample.meta["label"] is None
    tone = sample.waveform[1000:17000]
    peak = np.argmax(np.abs(np.fft.rfft(tone)))  # 1 s window at 16 kHz: bin = Hz
    assert peak == 440
    assert clip.path.exists()


def test_resume_redoes_only_unfinished_shards(tmp_path, synth_folder, ray_local, capsys):
    args = [
        str(synth_folder),
        "--labels",
        str(synth_folder / "labels.csv"),
        "--out",
        str(tmp_path / "s"),
        "--shard-size",
        "4",
        "--frame-size",
        "32",
    ]
    assert preprocess.main(args) == 0
    first = sorted(_keys(tmp_path / "s"))
    # Simulate a run killed after shard 00002's tar landed but before its stats did,
    # and one killed mid-upload (a temporary file).
    (tmp_path / "s" / "00002_stats.json").unlink()
    (tmp_path / "s" / ".00001.tar.tmp-00000999").write_bytes(b"partial")  # how storage names a local temp
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s").glob("0000[013].tar")}
    capsys.readouterr()
    assert preprocess.main(args) == 0
    assert "6 shards (5 already done)" in capsys.readouterr().out  # 18 clips ≤ 4 each, 2 slots: 3 rounds
    assert sorted(_keys(tmp_path / "s")) == first
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "s").glob("0000[013].tar")} == mtimes
    assert not list((tmp_path / "s").glob(".*.tmp-*"))


def test_a_small_job_is_spread_over_the_clusters_cpus_and_resumes_with_its_plan(
    tmp_path, synth_folder, ray_local, capsys
):
    """18 clips at the default 100 per shard would be one task on a 2-CPU Ray: the plan
    gives every CPU a shard. A resume where one slot runs (the local executor) keeps the
    recorded plan instead of refusing the folder or re-planning it."""
    import ray

    out = tmp_path / "s"
    args = [
        str(synth_folder),
        "--labels",
        str(synth_folder / "labels.csv"),
        "--out",
        str(out),
        "--frame-size",
        "32",
    ]
    assert ray.cluster_resources()["CPU"] == 2
    assert preprocess.main(args) == 0
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("0*_stats.json"))]
    assert [s["attempted"] for s in stats] == [9, 9]
    assert json.loads((out / "_plan.json").read_text())["shards"] == 2
    capsys.readouterr()
    assert preprocess.main([*args, "--executor", "local"]) == 0
    assert "18 clips, 2 shards (2 already done)" in capsys.readouterr().out


def test_different_plan_in_same_folder_is_refused(tmp_path, synth_folder, ray_local, capsys):
    out = str(tmp_path / "s")
    assert (
        preprocess.main(
            [str(synth_folder), "--out", out, "--shard-size", "10", "--frame-size", "32", "--limit", "4"]
        )
        == 0
    )
    assert (
        preprocess.main(
            [str(synth_folder), "--out", out, "--shard-size", "3", "--frame-size", "32", "--limit", "4"]
        )
        == 2
    )
    assert "different clip list" in capsys.readouterr().err


def test_labels_from_dirs_and_filters(tmp_path, synth_folder, ray_local):
    for i, p in enumerate(sorted(synth_folder.glob("*.mp4"))[:6]):
        target = tmp_path / "in" / ("dogs" if i % 2 else "cats") / p.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(p)
    out = tmp_path / "s"
    assert (
        preprocess.main(
            [
                str(tmp_path / "in"),
                "--labels-from-dirs",
                "--label",
                "dogs",
                "--out",
                str(out),
                "--frame-size",
                "32",
            ]
        )
        == 0
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["label_map"] == {"dogs": 0} and manifest["num_samples"] == 3
    assert Counter(k.split("/")[0] for k in _keys(out)) == {"dogs": 3}


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("abc,1,dog\n")
    assert preprocess.main([str(bad), "--out", str(tmp_path / "s")]) == 2
    assert "expected 4 fields" in capsys.readouterr().err


def test_ray_data_reads_the_shards(tmp_path, synth_folder, ray_local):
    import ray

    out = tmp_path / "s"
    assert (
        preprocess.main(
            [
                str(synth_folder),
                "--labels",
                str(synth_folder / "labels.csv"),
                "--out",
                str(out),
                "--shard-size",
                "7",
                "--frame-size",
                "32",
            ]
        )
        == 0
    )
    rows = ray.data.read_webdataset(str(out), file_extensions=["tar"]).take_all()
    assert len(rows) == 18
    row = rows[0]
    assert row["frame0.jpg"].shape == (32, 32, 3)
    assert {
        json.loads(r["json"])["key"] if isinstance(r["json"], (str, bytes)) else r["json"]["key"]
        for r in rows
    } == set(_keys(out))
