"""The training loop's pieces without data: a step that never reads the device, the
audio front end in fp32 under autocast, masks drawn where the data is, and the
composed training config with its flat recipe keys."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from avfusion.config import ConfigError, from_dict
from avfusion.distributed import DistEnv
from avfusion.model import AudioEncoder, FusionModel, ModelConfig, SpecMask
from avfusion.train import Run, TrainConfig, _lr_lambda, accumulate, build_model, train_step

META = torch.device("meta")


class Batch:
    def __init__(self, b, device):
        self.waveform = torch.randn(b, 8_000, device=device)
        self.frames = torch.randint(0, 256, (b, 2, 32, 32, 3), dtype=torch.uint8, device=device)
        self.keys = [f"k{i}" for i in range(b)]
        self.dead = torch.tensor([[True, False], [False, True]] + [[False, False]] * (b - 2), device=device)


def _run_on(device, **changes) -> Run:
    cfg = TrainConfig(shards="s", out="o").replace(embed_dim=16, audio_width=8, audio_filters=16, **changes)
    model = build_model(cfg, num_classes=4).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(10, 1))
    return Run(cfg, DistEnv(0, 1, 0, device), None, None, None, 10, model, model, opt, sched)


@pytest.mark.parametrize("changes", [{}, {"reliability_weight": 1.0}, {"modalities": "audio", "aux_weight": 0.0}])
def test_steps_on_the_meta_device_never_read_a_value(changes):
    """A meta tensor has no value: any .item(), bool(), .tolist() or copy to the host
    in the step or the running sums raises. Three steps and their sums pass, so the
    hot loop queues work without waiting for the device."""
    with pytest.raises(RuntimeError):
        torch.zeros((), device=META).item()  # the detector works
    r = _run_on(META, **changes)
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
    assert not [k for k in keys if k.startswith(("attention.video_proj", "attention.audio_score",
                                                 "attention.video_score", "video_head", "video."))]
    no_aux = FusionModel(ModelConfig(num_classes=3, embed_dim=8, audio_width=4, aux_heads=False))
    assert no_aux.audio_head is None and no_aux.video_head is None
    out = no_aux(torch.rand(2, 8_000), torch.randint(0, 256, (2, 1, 32, 32, 3), dtype=torch.uint8))
    assert out.audio_logits is None and out.scores is not None
    fused = FusionModel(ModelConfig(num_classes=3, embed_dim=8, audio_width=4, shared_head=False))
    assert {"attention.audio_score.weight", "audio_head.weight", "attention.video_proj.0.weight"} <= \
        set(fused.state_dict()), "a fused model's checkpoint keys are unchanged"
    shared = FusionModel(ModelConfig(num_classes=3, embed_dim=8, audio_width=4))
    assert not [k for k in shared.state_dict() if k.startswith(("audio_head", "video_head"))], "the head is shared"


def test_train_config_composes_model_and_loss_from_flat_keys():
    cfg = from_dict(TrainConfig, {"shards": "s", "out": "o", "embed_dim": 32, "modalities": "audio",
                                  "aux_weight": 0.5, "epochs": 2}, prefix="train")
    assert cfg.model == ModelConfig(embed_dim=32, modalities="audio") and cfg.loss.aux_weight == 0.5
    assert cfg.embed_dim == 32 and cfg.aux_weight == 0.5 and cfg.epochs == 2  # flat reads reach through
    nested = from_dict(TrainConfig, {"shards": "s", "out": "o", "model": {"embed_dim": 32, "modalities": "audio"},
                                     "loss": {"aux_weight": 0.5}, "epochs": 2})
    assert nested == cfg
    assert cfg.replace(embed_dim=8, lr=0.1).model.embed_dim == 8
    import dataclasses

    assert from_dict(TrainConfig, dataclasses.asdict(cfg)) == cfg, "Ray Train ships the config as a dict"
    with pytest.raises(ConfigError, match="train.model: give its keys either flat or"):
        from_dict(TrainConfig, {"shards": "s", "out": "o", "model": {}, "embed_dim": 3}, prefix="train")
    with pytest.raises(ConfigError, match="train.num_classes is not a recipe key"):
        from_dict(TrainConfig, {"shards": "s", "out": "o", "num_classes": 3}, prefix="train")
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(TrainConfig, {"shards": "s", "out": "o", "embed_dims": 3}, prefix="train")
    with pytest.raises(ConfigError, match="reliability_weight > 0 needs aux_weight > 0"):
        from_dict(TrainConfig, {"shards": "s", "out": "o", "aux_weight": 0.0, "reliability_weight": 1.0})
    with pytest.raises(AttributeError):
        cfg.no_such_field  # noqa: B018


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
