"""The training loop's pieces without data: a step that never reads the device, the
audio front end in fp32 under autocast, masks drawn where the data is, and the
training config with its model and loss nested."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from avfusion.config import ConfigError, from_dict
from avfusion.distributed import DistEnv
from avfusion.model import AudioEncoder, FusionModel, LossConfig, ModelConfig, SpecMask
from avfusion.train import Run, TrainConfig, _lr_lambda, accumulate, build_model, train_step

META = torch.device("meta")


class Batch:
    def __init__(self, b, device):
        self.waveform = torch.randn(b, 8_000, device=device)
        self.frames = torch.randint(0, 256, (b, 2, 32, 32, 3), dtype=torch.uint8, device=device)
        self.keys = [f"k{i}" for i in range(b)]
        self.dead = torch.tensor([[True, False], [False, True]] + [[False, False]] * (b - 2), device=device)
        self.blank = self.dead


def _run_on(device, model: dict | None = None, loss: dict | None = None) -> Run:
    cfg = TrainConfig(
        shards="s",
        out="o",
        model=ModelConfig(embed_dim=16, audio_width=8, audio_filters=16, **(model or {})),
        loss=LossConfig(**(loss or {})),
    )
    model = build_model(cfg, num_classes=4).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(10, 1))
    return Run(
        cfg=cfg,
        dist=DistEnv(0, 1, 0, device),
        data=None,
        train_subset=None,
        val_subset=None,
        steps=10,
        model=model,
        net=model,
        opt=opt,
        sched=sched,
    )


@pytest.mark.parametrize(
    "model, loss",
    [({}, {}), ({}, {"reliability_weight": 1.0}), ({"modalities": "audio"}, {"aux_weight": 0.0})],
)
def test_steps_on_the_meta_device_never_read_a_value(model, loss):
    """A meta tensor has no value: any .item(), bool(), .tolist() or copy to the host
    in the step or the running sums raises. Three steps and their sums pass, so the
    hot loop queues work without waiting for the device."""
    with pytest.raises(RuntimeError):
        torch.zeros((), device=META).item()  # the detector works
    r = _run_on(META, model, loss)
    sums, seen = {}, 0
    for _ in range(3):
        batch = Batch(4, META)
        loss, parts = train_step(r, batch, torch.randint(0, 4, (4,), device=META))
        seen += accumulate(sums, loss, parts, len(batch.keys))
    assert r.step == 3 and seen == 12
    assert all(v.device == META for v in sums.values()) and {"loss", "fused"} <= set(sums)


def test_the_same_step_on_cpu_gives_the_sums_it_reports():
    torch.manual_seed(0)
    r = _run_on(torch.device("cpu"))
    sums, losses = {}, []
    for _ in range(2):
        batch = Batch(4, "cpu")
        loss, parts = train_step(r, batch, torch.randint(0, 4, (4,)))
        accumulate(sums, loss, parts, 4)
        losses.append(loss.item())
    assert sums["loss"].item() == pytest.approx(4 * sum(losses), rel=1e-6)
    assert set(sums) == {"loss", "fused", "audio", "video"}


class DeviceLog(TorchDispatchMode):
    """Every device an op's result lands on."""

    def __init__(self):
        super().__init__()
        self.devices = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.devices.add(t.device.type)
        return out


def test_spec_masks_are_drawn_on_the_input_device():
    mask = SpecMask().train()
    x = torch.ones(3, 16, 50, device=META)
    with DeviceLog() as log:
        y = mask(x)
    assert y.shape == x.shape and log.devices == {"meta"}, log.devices  # no mask built on the CPU and copied


def test_gabor_front_end_runs_in_fp32_under_autocast():
    torch.manual_seed(0)
    enc = AudioEncoder(8, "gabor", n_filters=32).eval()
    wave = torch.rand(2, 16_000) * 2 - 1
    ref = enc.features(wave)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = enc.features(wave)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_unbuilt_modules_are_not_in_the_model():
    audio = FusionModel(ModelConfig(num_classes=3, modalities="audio", embed_dim=8, audio_width=4))
    keys = set(audio.state_dict())
    assert not [
        k
        for k in keys
        if k.startswith(
            ("attention.video_proj", "attention.audio_score", "attention.video_score", "video_head", "video.")
        )
    ]
    no_aux = FusionModel(ModelConfig(num_classes=3, embed_dim=8, audio_width=4, aux_heads=False))
    assert no_aux.audio_head is None and no_aux.video_head is None
    out = no_aux(torch.rand(2, 8_000), torch.randint(0, 256, (2, 1, 32, 32, 3), dtype=torch.uint8))
    assert out.audio_logits is None and out.scores is not None
    fused = FusionModel(ModelConfig(num_classes=3, embed_dim=8, audio_width=4, shared_head=False))
    assert {"attention.audio_score.weight", "audio_head.weight", "attention.video_proj.0.weight"} <= set(
        fused.state_dict()
    ), "a fused model's checkpoint keys are unchanged"
    shared = FusionModel(ModelConfig(num_classes=3, embed_dim=8, audio_width=4))
    assert not [k for k in shared.state_dict() if k.startswith(("audio_head", "video_head"))], (
        "the head is shared"
    )


def test_train_config_nests_model_and_loss():
    cfg = from_dict(
        TrainConfig,
        {
            "shards": "s",
            "out": "o",
            "epochs": 2,
            "loss": {"aux_weight": 0.5},
            "model": {"embed_dim": 32, "modalities": "audio"},
        },
        prefix="train",
    )
    assert cfg.model == ModelConfig(embed_dim=32, modalities="audio") and cfg.loss.aux_weight == 0.5
    assert cfg.epochs == 2
    import dataclasses

    assert from_dict(TrainConfig, dataclasses.asdict(cfg)) == cfg, "Ray Train ships the config as a dict"
    for key in ("num_classes", "sample_rate", "aux_heads"):
        value = {"num_classes": 3, "sample_rate": 8000, "aux_heads": False}[key]
        with pytest.raises(ConfigError, match=f"train.model.{key} is not a recipe key"):
            from_dict(TrainConfig, {"shards": "s", "out": "o", "model": {key: value}}, prefix="train")
    with pytest.raises(ConfigError, match=r"train.model: unknown key\(s\) \['embed_dims'\]"):
        from_dict(TrainConfig, {"shards": "s", "out": "o", "model": {"embed_dims": 3}}, prefix="train")
    with pytest.raises(ConfigError, match="reliability_weight > 0 needs aux_weight > 0"):
        from_dict(
            TrainConfig, {"shards": "s", "out": "o", "loss": {"aux_weight": 0.0, "reliability_weight": 1.0}}
        )


@pytest.mark.parametrize("key", ["embed_dim", "modalities", "aux_weight", "dead_weight"])
def test_a_model_or_loss_key_directly_under_train_is_an_unknown_key(tmp_path, key, capsys):
    """One spelling per parameter: model and loss keys live under ``train.model`` /
    ``train.loss``, and the strict loader names a key given anywhere else."""
    from avfusion.config import load_section
    from jobs import train as train_job

    recipe = tmp_path / "flat.yaml"
    recipe.write_text(f"train:\n  {key}: 1\n")
    with pytest.raises(ConfigError, match=rf"train: unknown key\(s\) \['{key}'\]"):
        load_section(TrainConfig, str(recipe), "train", shards="s", out="o")
    assert train_job.main(["s", "--out", str(tmp_path / "run"), "--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("avfusion train: train: unknown key(s) ") and f"['{key}']" in err, err
    assert not hasattr(TrainConfig(shards="s", out="o"), key), "no flat read either"


def test_setup_takes_who_it_is_from_the_launcher_not_the_environment(monkeypatch):
    """torchrun's variables are the job's to read: a library call told world 1 stays a
    single process even inside a torchrun environment, and honours a GPU-less grant."""
    import torch.distributed as tdist

    from avfusion.distributed import setup

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # CUDA visible, none granted
    dist = setup("auto", gpus_assigned=0)
    assert (dist.rank, dist.world, dist.local_rank, dist.device.type) == (0, 1, 0, "cpu")
    assert not tdist.is_initialized()
    assert dist.all_reduce_sum(torch.tensor([1.0, 2.0])) == [1.0, 2.0]
