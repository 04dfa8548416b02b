"""Preprocess submitted with `ray job submit` to a real two-node Ray cluster on loopback."""

import json
import sys
from pathlib import Path

import pytest
import webdataset as wds

from avfusion import sample_data
from tests.ray_cluster import LocalCluster

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def test_job_submit_to_head_and_worker(tmp_path):
    out = tmp_path / "shards"
    with LocalCluster(cpus_per_node=1, workers=1) as cluster:
        assert len(cluster.nodes()) == 2
        proc = cluster.submit(
            sys.executable,
            "-m",
            "jobs.preprocess",
            "avfusion/sample_data/clips",
            "--labels",
            "avfusion/sample_data/labels.csv",
            "--out",
            str(out),
            "--shard-size",
            "40",
            "--frame-size",
            "32",
            working_dir=str(REPO),
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "succeeded" in proc.stdout + proc.stderr
        tasks = cluster.ray(
            "list",
            "tasks",
            "--address",
            cluster.dashboard,
            "--format",
            "json",
            "--filter",
            "name=process_shard_item",
            "--limit",
            "100",
        )
        nodes_used = {t["node_id"] for t in json.loads(tasks.stdout)}
    assert len(nodes_used) == 2, "shards should run on both nodes"
    n_clips = len(sample_data.labels_csv().read_text().splitlines())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_samples"] == n_clips and manifest["num_shards"] == -(-n_clips // 40)
    keys = [
        s["__key__"] for s in wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False)
    ]
    assert len(keys) == len(set(keys)) == n_clips
