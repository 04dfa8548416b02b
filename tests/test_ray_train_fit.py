"""Ray Train's request against the cluster: GPUs like CPUs, every worker whole on one
node. The rule on node lists, then on a real two-node Ray cluster (logical GPUs): a
request no node set can hold is one line and exit 2, fast; one that fits trains."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avfusion.executor.ray_train import cluster_shortfall, workers_that_fit

REPO = Path(__file__).resolve().parents[1]
GPU_POD = {"CPU": 8.0, "GPU": 1.0, "memory": 32e9}
WORKER = {"CPU": 7, "GPU": 1}  # 1 + 6 loader workers, one GPU


def test_gpus_count_like_cpus():
    """Two one-GPU pods hold two workers, not four, whatever their CPUs."""
    assert workers_that_fit([GPU_POD, GPU_POD], WORKER) == 2
    assert cluster_shortfall([GPU_POD, GPU_POD], 4, WORKER) == (
        "4 Ray Train workers of 7 CPUs + 1 GPU each do not fit the Ray cluster: its nodes hold 2 "
        "(2 × 8 CPUs + 1 GPU)"
    )
    assert cluster_shortfall([GPU_POD] * 4, 4, WORKER) is None
    assert cluster_shortfall([{"CPU": 64.0}], 1, WORKER) == (
        "no node of the Ray cluster can hold one Ray Train worker of 7 CPUs + 1 GPU "
        "(its nodes: 1 × 64 CPUs + 0 GPUs)"
    )


def test_a_worker_fits_on_one_node_or_not_at_all():
    """8 CPUs over two 4-CPU nodes cannot host a 7-CPU worker; a head with no CPUs
    holds none; one big node holds as many whole workers as each resource allows."""
    small = {"CPU": 4.0}
    assert workers_that_fit([small, small], {"CPU": 7}) == 0
    assert "no node of the Ray cluster can hold one Ray Train worker of 7 CPUs" in (
        cluster_shortfall([small, small], 1, {"CPU": 7}) or ""
    )
    assert workers_that_fit([{"CPU": 0.0}, {"CPU": 16.0, "GPU": 8.0}], WORKER) == 2
    assert workers_that_fit([{"CPU": 4.0, "GPU": 1.0}], {"CPU": 1, "GPU": 0.25}) == 4
    assert workers_that_fit([{"CPU": 1.0, "GPU": 0.7 + 0.2 + 0.1}], {"CPU": 1, "GPU": 1}) == 1
    assert cluster_shortfall([], 1, {"CPU": 1}) == (
        "no node of the Ray cluster can hold one Ray Train worker of 1 CPU (its nodes: no live nodes)"
    )


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of 2 CPUs and 1 logical GPU each: 4 CPUs, 2 GPUs, no node with 3 CPUs."""
    from tests.ray_cluster import LocalCluster

    with LocalCluster(cpus_per_node=2, workers=1, gpus_per_node=1) as c:
        yield c


def _train(cluster, tmp_path, *args: str, timeout: float = 180) -> tuple[subprocess.CompletedProcess, float]:
    shards = tmp_path / "shards"
    shards.mkdir(exist_ok=True)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.train", str(shards), "--out", str(tmp_path / "run")]
        + ["--address", cluster.address, *args],
        env=dict(cluster.env, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=timeout,  # Ray Train waiting forever would fail here, not hang the suite
    )
    return proc, time.monotonic() - t0


def _refusal(proc) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("avfusion train:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.slow
def test_more_gpus_than_the_cluster_has_is_one_line(cluster, tmp_path):
    proc, took = _train(cluster, tmp_path, "--ray-workers", "3", "--gpu", "--workers", "0")
    assert _refusal(proc) == (
        "avfusion train: 3 Ray Train workers of 1 CPU + 1 GPU each do not fit the Ray cluster: its nodes "
        "hold 2 (2 × 2 CPUs + 1 GPU); a worker's CPUs are 1 + 0 loader workers: lower --ray-workers or "
        "--workers, or add nodes (on an autoscaling cluster, --wait-for-nodes waits for them)"
    )
    assert took < 120, took
    assert not (tmp_path / "run" / "ray").exists()  # Ray Train never started


@pytest.mark.slow
def test_a_worker_larger_than_any_node_is_one_line(cluster, tmp_path):
    """4 CPUs in all, but a 3-CPU worker (1 + 2 loader workers) fits on no node."""
    proc, _ = _train(cluster, tmp_path, "--ray-workers", "1", "--workers", "2")
    assert "no node of the Ray cluster can hold one Ray Train worker of 3 CPUs (its nodes: 2 × 2 CPUs)" in (
        _refusal(proc)
    )


@pytest.mark.slow
def test_a_request_that_fits_trains_across_both_nodes(
    cluster, tmp_path, synthetic_shards, small_train_config
):
    """Two workers of 2 CPUs each: one per node, and the run completes."""
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.train", str(synthetic_shards), "--out", str(run)]
        + ["--config", str(small_train_config), "--address", cluster.address, "--ray-workers", "2"]
        + ["--workers", "1", "--epochs", "1", "--batch-size", "4", "--steps-per-epoch", "1"],
        env=dict(cluster.env, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["step"] == ranks[1]["step"] == 1
