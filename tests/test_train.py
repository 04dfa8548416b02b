"""Training: learning on synthetic shards, torchrun DDP, Ray Train, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jobs import train as train_job

pytestmark = pytest.mark.slow


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_learns_well_above_chance(tmp_path, synthetic_shards, small_train_config):
    run = tmp_path / "run"
    assert train_job.main([str(synthetic_shards), "--out", str(run), "--config", str(small_train_config),
                           "--epochs", "6", "--seed", "0"]) == 0
    last = _metrics(run)[-1]
    assert last["val_n"] == 24
    assert last["val_top1"] >= 0.4, f"chance is 1/6; got {last['val_top1']:.3f}"
    assert abs(last["w_audio"] + last["w_video"] - 1) < 1e-5
    for name in ("last.pt", "label_map.json", "curves.png", "metrics.jsonl"):
        assert (run / name).exists(), name
    assert list((run / "tb").iterdir()), "TensorBoard events written"


def test_torchrun_ddp_two_ranks_stay_in_step(tmp_path, synthetic_shards, small_train_config, cli_env):
    run = tmp_path / "ddp"
    env = dict(cli_env, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr",
                           "127.0.0.1", "--master_port", str(_free_port()), "-m", "jobs.train", str(synthetic_shards),
                           "--out", str(run), "--config", str(small_train_config), "--epochs", "2",
                           "--batch-size", "8", "--steps-per-epoch", "3"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["step"] == ranks[1]["step"] == 6
    assert ranks[0]["param_checksum"] == pytest.approx(ranks[1]["param_checksum"], rel=1e-9)
    assert _metrics(run)[-1]["val_n"] == 24  # both ranks' evaluation shares summed


def test_ray_train_two_workers(tmp_path, synthetic_shards, small_train_config, cli_env):
    run = tmp_path / "ray"
    proc = subprocess.run(["avfusion", "train", str(synthetic_shards), "--out", str(run), "--config",
                           str(small_train_config), "--epochs", "1", "--batch-size", "8", "--steps-per-epoch", "2",
                           "--ray-workers", "2"], env=cli_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["step"] == ranks[1]["step"] == 2
    assert ranks[0]["param_checksum"] == pytest.approx(ranks[1]["param_checksum"], rel=1e-9)
    assert (run / "last.pt").exists()


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, synthetic_shards, small_train_config, cli_env):
    args = [str(synthetic_shards), "--config", str(small_train_config), "--epochs", "4", "--batch-size", "8",
            "--steps-per-epoch", "3", "--seed", "1", "--workers", "0"]
    clean = tmp_path / "clean"
    assert subprocess.run(["avfusion", "train", *args, "--out", str(clean)], env=cli_env, capture_output=True,
                          timeout=600).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen(["avfusion", "train", *args, "--out", str(killed)], env=cli_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (killed / "metrics.jsonl").exists() and len(_metrics(killed)) >= 2:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    import torch

    done = torch.load(killed / "last.pt", weights_only=True)["epoch"] + 1
    assert 1 <= done < 4, "the kill must land mid-training"
    resumed = subprocess.run(["avfusion", "train", *args, "--out", str(killed)], env=cli_env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {killed / 'last.pt'} at epoch {done}" in resumed.stdout
    a, b = _metrics(clean), _metrics(killed)
    assert [m["step"] for m in b] == [m["step"] for m in a] == [3, 6, 9, 12]
    assert b[-1]["train_loss"] == pytest.approx(a[-1]["train_loss"], rel=1e-6)
    assert b[-1]["val_loss"] == pytest.approx(a[-1]["val_loss"], rel=1e-6)
    assert not [p for p in killed.iterdir() if p.name.startswith(".last.pt")], "no temporary checkpoint left"


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
