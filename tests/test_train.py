"""Training: learning on synthetic shards, torchrun DDP, Ray Train, kill and resume."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from jobs import train as train_job

pytestmark = pytest.mark.slow


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_learns_well_above_chance(tmp_path, synthetic_shards, small_train_config):
    run = tmp_path / "run"
    assert (
        train_job.main(
            [
                str(synthetic_shards),
                "--out",
                str(run),
                "--config",
                str(small_train_config),
                "--epochs",
                "6",
                "--seed",
                "0",
            ]
        )
        == 0
    )
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
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            "-m",
            "jobs.train",
            str(synthetic_shards),
            "--out",
            str(run),
            "--config",
            str(small_train_config),
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--device",
            "cpu",  # gloo, and two ranks even on a one-GPU machine
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # No --steps-per-epoch: the epoch length comes from the manifest as in real runs, over
    # shards of uneven size (10, …, 6); both ranks finish every epoch (no hang) in step.
    steps = _derived_steps(synthetic_shards, batch=8, world=2)
    assert steps >= 2
    assert ranks[0]["step"] == ranks[1]["step"] == 2 * steps
    assert ranks[0]["param_checksum"] == pytest.approx(ranks[1]["param_checksum"], rel=1e-9)
    assert _metrics(run)[-1]["val_n"] == 24  # both ranks' evaluation shares summed


def test_ray_train_two_workers(tmp_path, synthetic_shards, small_train_config, cli_env):
    run = tmp_path / "ray"
    proc = subprocess.run(
        [
            "avfusion",
            "train",
            str(synthetic_shards),
            "--out",
            str(run),
            "--config",
            str(small_train_config),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--steps-per-epoch",
            "2",
            "--ray-workers",
            "2",
        ],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["step"] == ranks[1]["step"] == 2
    assert ranks[0]["param_checksum"] == pytest.approx(ranks[1]["param_checksum"], rel=1e-9)
    assert (run / "last.pt").exists()


def test_kill_and_resume_matches_uninterrupted_run(tmp_path, synthetic_shards, small_train_config, cli_env):
    args = [
        str(synthetic_shards),
        "--config",
        str(small_train_config),
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--steps-per-epoch",
        "3",
        "--seed",
        "1",
        "--workers",
        "0",
        "--device",
        "cpu",  # bit-exact resume is a CPU property (cudnn.benchmark picks kernels per run)
    ]
    clean = tmp_path / "clean"
    assert (
        subprocess.run(
            ["avfusion", "train", *args, "--out", str(clean)], env=cli_env, capture_output=True, timeout=600
        ).returncode
        == 0
    )
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        ["avfusion", "train", *args, "--out", str(killed)],
        env=cli_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
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
    resumed = subprocess.run(
        ["avfusion", "train", *args, "--out", str(killed)],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {killed / 'last.pt'} at epoch {done}" in resumed.stdout
    a, b = _metrics(clean), _metrics(killed)
    assert [m["step"] for m in b] == [m["step"] for m in a] == [3, 6, 9, 12]
    assert b[-1]["train_loss"] == pytest.approx(a[-1]["train_loss"], rel=1e-6)
    assert b[-1]["val_loss"] == pytest.approx(a[-1]["val_loss"], rel=1e-6)
    # "Identical, bit for bit": every parameter and buffer, every optimizer state tensor,
    # the scheduler and the RNG of the resumed run equal the uninterrupted run's.
    ca, cb = (torch.load(run / "last.pt", weights_only=True) for run in (clean, killed))
    assert ca["model"].keys() == cb["model"].keys()
    for name, tensor in ca["model"].items():
        assert torch.equal(tensor, cb["model"][name]), f"parameter {name} differs"
    oa, ob = ca["optimizer"], cb["optimizer"]
    assert oa["param_groups"] == ob["param_groups"]
    n_params = len(oa["param_groups"][0]["params"])
    assert sorted(oa["state"]) == sorted(ob["state"]) and len(oa["state"]) == n_params > 0
    for index, state in oa["state"].items():
        assert state.keys() == ob["state"][index].keys()
        for key, value in state.items():
            other = ob["state"][index][key]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other, (index, key)
    assert ca["scheduler"] == cb["scheduler"] and (ca["epoch"], ca["step"]) == (cb["epoch"], cb["step"]) == (
        3,
        12,
    )
    assert torch.equal(ca["rng"], cb["rng"])
    assert not [p for p in killed.iterdir() if p.name.startswith(".last.pt")], "no temporary checkpoint left"


def test_a_last_pt_without_the_format_marker_is_refused(
    tmp_path, synthetic_shards, small_train_config, capsys
):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": {}, "epoch": 0, "step": 3, "version": "0.1.0"}, run / "last.pt")
    assert (
        train_job.main(
            [
                str(synthetic_shards),
                "--out",
                str(run),
                "--config",
                str(small_train_config),
                "--epochs",
                "1",
                "--steps-per-epoch",
                "1",
                "--workers",
                "0",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("avfusion train:")]
    assert "Traceback" not in err and len(ours) == 1 and "is not an avfusion checkpoint" in ours[0], err
    assert "retrain with avfusion" in ours[0] and not (run / "metrics.jsonl").exists()


def _derived_steps(shards, batch: int, world: int) -> int:
    """Steps per epoch as ``avfusion.train.train`` derives them without --steps-per-epoch."""
    manifest = json.loads((shards / "manifest.json").read_text())
    return max(1, manifest["by_split"]["train"] // (batch * world))


def test_uneven_shards_each_rank_ends_the_epoch_after_the_derived_batches(synthetic_shards, monkeypatch):
    """Each rank's loader, read to its end, yields exactly the per-worker batch count
    train derives (ceil(steps / workers) per worker) over uneven shards: the epoch ends
    by ``with_epoch``, not by the caller cutting an endless stream (without it this
    read hits the cap below instead of ending)."""
    import math
    from itertools import islice

    from avfusion.loader import Dataset, TrainStream, data_loader

    data = Dataset.open(str(synthetic_shards))
    sizes = [s["count"] for s in data.manifest["shards"] if s["count"]]
    assert len(set(sizes)) > 1, f"shards must be uneven: {sizes}"
    batch, world, workers = 8, 2, 2
    steps = _derived_steps(synthetic_shards, batch, world)
    per_worker = math.ceil(steps / workers)
    counts = []
    for rank in range(world):
        ds = TrainStream(
            data.urls, batch, split="train", batches_per_epoch=per_worker, seed=3, rank=rank, world=world
        )
        got = list(islice(data_loader(ds, workers), per_worker * workers + 5))
        assert all(len(b.keys) == batch for b in got), "training batches are full"
        counts.append(len(got))
    assert counts == [per_worker * workers] * world and per_worker * workers >= steps, counts


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("launcher", ["single", "ray"])
def test_a_cut_shard_stops_training_with_one_line_naming_it(
    tmp_path, synthetic_shards, small_train_config, cli_env, launcher
):
    """A shard cut short (a half-copied tar) is not a skipped shard or a tarfile trace from
    deep in a DataLoader worker or a Ray Train worker: the job exits 1 and its last line
    names the shard. The config's loader worker (workers: 1) is kept on purpose: torch
    re-raises a worker's error with the worker's whole traceback as its message."""
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards, shards)
    cut = shards / "00001.tar"
    cut.write_bytes(cut.read_bytes()[:5000])
    extra = ["--ray-workers", "2"] if launcher == "ray" else []
    proc = subprocess.run(
        [
            "avfusion",
            "train",
            str(shards),
            "--out",
            str(tmp_path / "run"),
            "--config",
            str(small_train_config),
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--steps-per-epoch",
            "20",
            *extra,
        ],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"avfusion train: shard {cut} is not a readable tar (5000 bytes)"), proc.stderr[
        -3000:
    ]
    assert "\n" not in last and len(last) < 300


def test_compiled_training_runs_and_matches_eager(
    tmp_path, synthetic_shards, small_train_config, monkeypatch
):
    """--compile (torch.compile, inductor on the CPU here) trains the same steps as eager.
    Inductor draws dropout and SpecMask randoms from its own generator unless told to
    use eager's (``fallback_random``), which makes the two runs comparable step by step."""
    import torch._inductor.config

    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    args = [
        str(synthetic_shards),
        "--config",
        str(small_train_config),
        "--modalities",
        "audio",
        "--epochs",
        "1",
        "--steps-per-epoch",
        "2",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--seed",
        "2",
    ]
    assert train_job.main([*args, "--out", str(tmp_path / "eager")]) == 0
    assert train_job.main([*args, "--out", str(tmp_path / "compiled"), "--compile"]) == 0
    eager, compiled = _metrics(tmp_path / "eager")[-1], _metrics(tmp_path / "compiled")[-1]
    assert compiled["step"] == 2
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-3)
    # the validation loss is read after the two AdamW steps, whose normalised updates
    # amplify last-bit differences of inductor's reordered reductions (1.6e-3 measured)
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], rel=5e-3)


def test_a_checkpoint_predicts_after_its_video_weights_file_is_gone(
    tmp_path, synthetic_shards, small_train_config
):
    """The checkpoint is self-contained: training started from a ResNet-18 file, and the
    model rebuilt from the checkpoint alone gives the trained model's outputs."""
    from torchvision.models import resnet18

    from avfusion.checkpoint import model_from_checkpoint
    from avfusion.model import FusionModel, ModelConfig

    weights = tmp_path / "r18.pth"
    torch.save(resnet18(weights=None).state_dict(), weights)
    run = tmp_path / "run"
    assert (
        train_job.main(
            [
                str(synthetic_shards),
                "--out",
                str(run),
                "--config",
                str(small_train_config),
                "--modalities",
                "video",
                "--epochs",
                "1",
                "--steps-per-epoch",
                "1",
                "--batch-size",
                "4",
                "--workers",
                "0",
                "--video-weights",
                str(weights),
            ]
        )
        == 0
    )
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["model_config"]["video_weights"] == str(weights)
    assert ckpt["video_init"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    trained = FusionModel(ModelConfig(**{**ckpt["model_config"], "video_weights": "none"}))
    trained.load_state_dict(ckpt["model"])
    weights.unlink()
    model, _ = model_from_checkpoint(run / "last.pt")
    frames = torch.randint(0, 256, (2, 8, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(model(None, frames).logits, trained.eval()(None, frames).logits)


def test_a_run_whose_loss_becomes_nan_stops_with_one_line_and_saves_nothing(
    tmp_path, synthetic_shards, small_train_config, capsys
):
    """Video weights holding a NaN (a corrupt file) make every loss NaN: the job stops
    at the epoch's end with one line, exit 1, and writes no checkpoint or metrics row."""
    from torchvision.models import resnet18

    weights = resnet18().state_dict()
    weights["conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(weights, tmp_path / "nan.pth")
    run = tmp_path / "run"
    argv = [str(synthetic_shards), "--out", str(run), "--config", str(small_train_config), "--device", "cpu"]
    argv += [
        "--epochs",
        "2",
        "--steps-per-epoch",
        "2",
        "--workers",
        "0",
        "--video-weights",
        str(tmp_path / "nan.pth"),
    ]
    assert train_job.main(argv) == 1
    err = capsys.readouterr().err
    ours = [line for line in err.splitlines() if line.startswith("avfusion train:")]
    assert "Traceback" not in err and len(ours) == 1, err
    assert "epoch 0: the training loss is nan (non-finite)" in ours[0], ours
    assert not (run / "last.pt").exists() and not (run / "metrics.jsonl").exists()
