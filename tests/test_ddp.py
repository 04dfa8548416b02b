"""DDP for every model: fused, audio-only, video-only and a loss without aux heads, each
trained with torchrun (2 ranks, gloo) and Ray Train (2 workers) and compared with the
same recipe in one process. Before the models built only what they use, the unimodal
and aux-free runs died under DDP ("Expected to have finished reduction …")."""

import json
import subprocess
import sys

import pytest

from jobs import train as train_job

pytestmark = pytest.mark.slow

TINY = (
    "train:\n  workers: 0\n  batch_size: 8\n  lr: 0.003\n  warmup_fraction: 0.5\n"
    "  model:\n    embed_dim: 16\n    audio_width: 8\n    audio_filters: 16\n"
)
VARIANTS = {
    "fused": [],
    "audio": ["--modalities", "audio"],
    "video": ["--modalities", "video"],
    "aux0": [],
    "separate_heads": [],
}
EXTRA = {"aux0": "  loss:\n    aux_weight: 0.0\n", "separate_heads": "    shared_head: false\n"}


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _ranks(run):
    return [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_torchrun_and_ray_train_match_one_process(tmp_path, synthetic_shards, cli_env, ray_local, variant):
    from avfusion.config import from_dict, load_yaml
    from avfusion.executor import ray_train
    from avfusion.train import TrainConfig

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY + EXTRA.get(variant, ""))
    args = [
        str(synthetic_shards),
        "--config",
        str(recipe),
        "--epochs",
        "2",
        "--steps-per-epoch",
        "2",
        "--seed",
        "3",
        "--device",
        "cpu",  # gloo: two ranks, also on a one-GPU machine
        *VARIANTS[variant],
    ]
    single, ddp, ray_run = tmp_path / "single", tmp_path / "torchrun", tmp_path / "ray"
    assert train_job.main([*args, "--out", str(single)]) == 0
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
            *args,
            "--out",
            str(ddp),
        ],
        env=dict(cli_env, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = dict(
        load_yaml(str(recipe))["train"],
        shards=str(synthetic_shards),
        out=str(ray_run),
        epochs=2,
        steps_per_epoch=2,
        seed=3,
    )
    if variant in ("audio", "video"):
        data["model"] = {**data["model"], "modalities": variant}
    ray_train.fit(from_dict(TrainConfig, data, prefix="train"), num_workers=2)

    for run in (ddp, ray_run):  # both ranks took every step and hold the same weights
        ranks = _ranks(run)
        assert [r["world"] for r in ranks] == [2, 2] and ranks[0]["step"] == ranks[1]["step"] == 4
        assert ranks[0]["param_checksum"] == pytest.approx(ranks[1]["param_checksum"], rel=1e-9)
    curves = {
        name: [m["train_loss"] for m in _metrics(run)]
        for name, run in (("single", single), ("torchrun", ddp), ("ray", ray_run))
    }
    # The two launchers run the same ranks on the same shards: the same curve.
    assert curves["ray"] == pytest.approx(curves["torchrun"], rel=1e-4), curves
    # One process sees other clips per step (each rank reads its half of the shards),
    # so its curve matches within the clip-to-clip spread, not exactly.
    assert curves["torchrun"] == pytest.approx(curves["single"], rel=0.15), curves
    import torch

    ckpt = torch.load(ddp / "last.pt", weights_only=True)
    keys = set(ckpt["model"])
    assert any(k.startswith("attention.audio_score") for k in keys) == (
        variant in ("fused", "aux0", "separate_heads")
    )
    # the fused classifier is each modality's head unless the recipe asks for separate ones
    assert any(k.startswith("audio_head") or k.startswith("video_head") for k in keys) == (
        variant == "separate_heads"
    )
    other = {"audio": "attention.video_proj", "video": "attention.audio_proj"}.get(variant)
    assert other is None or not any(k.startswith(other) for k in keys), (
        "a unimodal model owns no other branch"
    )
