"""The training recipe: mel-initialised filterbank, augmentations,
reliability term, presets, k-fold subsets and attention agreement."""

import math

import numpy as np
import pytest
import torch

from avfusion.augment import AugmentConfig
from avfusion.model import (
    FusionModel,
    FusionOutput,
    GaborFilterbank,
    LossConfig,
    ModelConfig,
    SpecMask,
    attention_agrees,
    fusion_loss,
    hz_to_mel,
    mel_filter_params,
    reliability_loss,
    reliability_targets,
)
from jobs.bench.reference_augment import (
    Augment,
    augment_content,
    color_jitter,
    random_resized_crop,
    shift_and_gain,
    temporal_crop,
)


def test_gabor_filterbank_starts_on_the_mel_scale():
    fb = GaborFilterbank(n_filters=40, sample_rate=16_000, f_min=60, f_max=7800)
    centres = fb.centre_hz().numpy()
    mels = np.array([hz_to_mel(f) for f in centres])
    steps = np.diff(mels)
    assert np.allclose(steps, steps.mean(), rtol=1e-3), "centres equally spaced in mel"
    assert 60 < centres[0] < 200 and 7000 < centres[-1] < 7800
    # Each filter's measured frequency response peaks at its mel centre ...
    kernels = fb.kernels().detach()[:, 0].numpy()
    complex_k = kernels[:40] + 1j * kernels[40:]
    n_fft = 16_000  # 1 Hz bins
    response = np.abs(np.fft.fft(complex_k, n=n_fft, axis=1))
    freqs = np.fft.fftfreq(n_fft, 1 / 16_000)
    peaks = np.abs(freqs[response.argmax(axis=1)])
    assert np.allclose(peaks, centres, atol=3.0)
    # ... with the full width at half maximum of the triangular mel filter it replaces
    # (except the lowest bands, whose windows the kernel length clamps).
    _, mel_fwhm = mel_filter_params(40, 16_000, 60, 7800)
    widths = (response >= response.max(axis=1, keepdims=True) / 2).sum(axis=1)  # in 1 Hz bins
    free = fb.sigma.detach().numpy() < fb.sigma_range[1]
    assert free.sum() >= 30
    np.testing.assert_allclose(widths[free], np.array(mel_fwhm)[free], rtol=0.1)
    assert np.all(np.diff(widths) >= 0), "bandwidth grows with frequency"


def test_gabor_filter_selects_its_band():
    fb = GaborFilterbank(n_filters=32)
    t = torch.arange(16_000) / 16_000
    centres = fb.centre_hz()
    k = 20
    tone = torch.sin(2 * math.pi * centres[k] * t)[None]
    power = fb(tone)[0].mean(dim=1)
    assert int(power.argmax()) == k


def test_spec_mask_is_seeded_and_only_in_training():
    mask = SpecMask(time_masks=2, max_time=0.2, freq_masks=2, max_freq=0.2)
    x = torch.ones(4, 20, 50)
    torch.manual_seed(3)
    a = mask(x)
    torch.manual_seed(3)
    b = mask(x)
    assert torch.equal(a, b) and (a == 0).any()
    mask.eval()
    assert torch.equal(mask(x), x)


def _sample(seed=0, n=32_000, t=8, s=32):
    rng = np.random.default_rng(seed)
    return {
        "key": "clip_000001",
        "target": 3,
        "waveform": (rng.random(n, dtype=np.float32) - 0.5),
        "frames": rng.integers(0, 256, (t, s, s, 3), dtype=np.uint8),
    }


@pytest.mark.parametrize(
    "fn",
    [
        lambda s, r: {**s, "waveform": shift_and_gain(s["waveform"], r, True, 6.0)},
        lambda s, r: {**s, "frames": random_resized_crop(s["frames"], r, 0.5)},
        lambda s, r: {**s, "frames": color_jitter(s["frames"], r, 0.3)},
        lambda s, r: temporal_crop(s, r, 1.0, 4),
        lambda s, r: augment_content(s, AugmentConfig(content=True), r),
    ],
    ids=["shift_gain", "resized_crop", "color_jitter", "temporal_crop", "content"],
)
def test_each_augmentation_is_seeded_and_keeps_the_label(fn):
    sample = _sample()
    a = fn(sample, np.random.default_rng(7))
    b = fn(sample, np.random.default_rng(7))
    c = fn(sample, np.random.default_rng(8))
    for key in ("waveform", "frames"):
        np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a[k], c[k]) for k in ("waveform", "frames")), "a different seed differs"
    assert a["target"] == 3 and a["key"] == "clip_000001"
    assert a["frames"].dtype == np.uint8 and a["waveform"].dtype == np.float32
    assert np.abs(a["waveform"]).max() <= 1.0


def test_temporal_crop_shapes_and_order():
    sample = _sample(n=32_000, t=8)
    sample["frames"] = np.arange(8, dtype=np.uint8)[:, None, None, None] * np.ones((8, 4, 4, 3), np.uint8)
    out = temporal_crop(sample, np.random.default_rng(0), 1.0, 4, sample_rate=16_000)
    assert out["waveform"].shape == (16_000,)
    kept = out["frames"][:, 0, 0, 0]
    assert len(kept) == 4 and list(kept) == sorted(kept), "frames keep their temporal order"


def test_augment_pipeline_is_deterministic_per_seed():
    cfg = AugmentConfig(content=True, crop_seconds=1.0, crop_frames=4)
    outs = []
    for seed in (5, 5, 6):
        aug = Augment(cfg, seed)
        outs.append([aug(_sample(i)) for i in range(6)])
    for x, y in zip(outs[0], outs[1], strict=False):
        np.testing.assert_array_equal(x["waveform"], y["waveform"])
        np.testing.assert_array_equal(x["frames"], y["frames"])
        assert x["target"] == 3
    assert any(not np.array_equal(x["frames"], z["frames"]) for x, z in zip(outs[0], outs[2], strict=False))


def test_mixup_is_seeded_and_keeps_the_dominant_label():
    from avfusion.augment import mixup
    from avfusion.loader import Batch

    batch = Batch(
        torch.randn(6, 100),
        torch.randint(0, 255, (6, 2, 4, 4, 3), dtype=torch.uint8),
        torch.tensor([0, 1, 2, 3, 4, 5]),
        [str(i) for i in range(6)],
    )
    a, ta = mixup(batch, 6, alpha=0.4, prob=1.0, rng=np.random.default_rng(0))
    b, tb = mixup(batch, 6, alpha=0.4, prob=1.0, rng=np.random.default_rng(0))
    assert torch.equal(a.waveform, b.waveform) and torch.equal(ta, tb)
    torch.testing.assert_close(ta.sum(dim=1), torch.ones(6))
    assert (ta.argmax(dim=1) == batch.target).all() or (ta.max(dim=1).values == 0.5).any()
    assert (ta[torch.arange(6), batch.target] >= 0.5).all(), "each clip's own label dominates"
    same, soft = mixup(batch, 6, alpha=0.4, prob=0.0)
    assert same is batch and torch.equal(soft.argmax(dim=1), batch.target)


def _fused_output(c_audio: float, c_video: float, scores=(0.0, 0.0)) -> FusionOutput:
    """Heads that give the true class (0) the probabilities c_audio and c_video."""

    def logits(c):
        return torch.log(torch.tensor([[c, (1 - c) / 2, (1 - c) / 2]]))

    s = torch.tensor([scores], requires_grad=True)
    return FusionOutput(torch.zeros(1, 3), torch.softmax(s, dim=1), logits(c_audio), logits(c_video), s)


def test_reliability_target_prefers_the_modality_whose_head_knows():
    target = torch.nn.functional.one_hot(torch.tensor([0]), 3).float()
    assert reliability_targets(_fused_output(0.9, 0.1), target).item() == pytest.approx(0.9)
    assert (
        reliability_targets(_fused_output(1 / 3, 0.95), target).item() < 0.3
    )  # muted audio: head at the prior
    assert reliability_targets(_fused_output(0.8, 0.8), target).item() == pytest.approx(0.5)
    # the loss is lowest when the weights equal the target
    losses = {
        s: reliability_loss(_fused_output(0.9, 0.1, (s, 0.0)), target).item() for s in (-2.0, 0.0, 2.2, 5.0)
    }
    assert min(losses, key=losses.get) == 2.2


def test_reliability_gradient_reaches_both_scores_not_the_heads():
    torch.manual_seed(0)
    model = FusionModel(
        ModelConfig(num_classes=4, embed_dim=16, audio_width=8, audio_filters=16, shared_head=False)
    )
    out = model(torch.rand(3, 16_000) - 0.5, torch.randint(0, 256, (3, 2, 32, 32, 3), dtype=torch.uint8))
    reliability_loss(out, torch.nn.functional.one_hot(torch.tensor([0, 1, 2]), 4).float()).backward()
    for score in (model.attention.audio_score, model.attention.video_score):
        assert score.weight.grad is not None and score.weight.grad.abs().sum() > 0
    assert model.audio_head.weight.grad is None and model.video_head.weight.grad is None, (
        "targets are detached"
    )
    loss, parts = fusion_loss(out, torch.tensor([0, 1, 2]), LossConfig(reliability_weight=1.0))
    assert "reliability" in parts


def test_the_dead_modality_term_pushes_the_dead_stream_s_score_down():
    """Its gradient reaches both scores (and the evidence weights they read), lowers the
    dead stream's score against the live one's, and leaves the classifier alone; clips
    with both streams alive add nothing; off (weight 0) it is not in the loss."""
    from avfusion.model import dead_modality_loss

    torch.manual_seed(0)
    model = FusionModel(ModelConfig(num_classes=4, embed_dim=16, audio_width=8, audio_filters=16))
    out = model(torch.rand(3, 16_000) - 0.5, torch.randint(0, 256, (3, 2, 32, 32, 3), dtype=torch.uint8))
    dead = torch.tensor([[True, False], [False, True], [False, False]])  # muted; black; both alive
    loss = dead_modality_loss(out, dead)
    (g,) = torch.autograd.grad(loss, out.scores, retain_graph=True)
    loss.backward()
    for score in (model.attention.audio_score, model.attention.video_score):
        assert score.weight.grad[0, -2:].abs().sum() > 0, "the evidence columns get a gradient"
    assert g[0, 0] > 0 > g[0, 1] and g[1, 1] > 0 > g[1, 0], "descent lowers the dead stream's score"
    assert (g[2] == 0).all() and model.classifier.weight.grad is None
    _, parts = fusion_loss(out, torch.tensor([0, 1, 2]), LossConfig(), dead)
    assert "dead" not in parts
    _, parts = fusion_loss(out, torch.tensor([0, 1, 2]), LossConfig(dead_weight=1.0), dead)
    assert parts["dead"] > 0


def test_a_dead_stream_s_own_head_is_taught_that_it_knows_nothing():
    """``loss.dead_uniform``: the dead stream's own head is pulled to uniform logits on the
    clips whose stream is dead (its gradient there is zero only when the logits are flat),
    the live head and clips with both streams alive keep the class; off, the dead head is
    pulled to the class it cannot know. Given ``blank``, only blank streams (muted, black)
    are: a frozen one still shows a live picture."""
    n = 4
    logits = torch.tensor([[3.0, 0.0, 0.0, 0.0]] * 3, requires_grad=True)  # every head says class 0
    live = logits.detach().clone().requires_grad_(True)
    dead = torch.tensor([[True, False], [False, False], [False, True]])  # muted; alive; black
    target = torch.tensor([1, 1, 1])

    def grads(uniform: bool) -> tuple[torch.Tensor, torch.Tensor]:
        out = FusionOutput(
            logits=live.detach(), weights=torch.full((3, 2), 0.5), audio_logits=logits, video_logits=live
        )
        loss, _ = fusion_loss(out, target, LossConfig(aux_weight=1.0, dead_uniform=uniform), dead)
        return torch.autograd.grad(loss, (logits, live))

    g_audio, g_video = grads(True)
    uniform_pull = torch.softmax(logits.detach()[0], 0) - 1 / n  # d CE(uniform) / d logits, × 3 clips
    assert torch.allclose(g_audio[0] * 3, uniform_pull), "the muted clip's audio head: towards flat"
    assert g_audio[1, 1] < 0 and g_audio[1, 0] > 0, "both alive: the audio head learns the class"
    assert g_video[2, 1] == g_video[2, 2], "the black clip's video head: no class singled out"
    assert g_video[0, 1] < 0, "the muted clip's video head still learns the class"
    g_audio, _ = grads(False)
    assert g_audio[0, 1] < 0 and g_audio[0, 1] < g_audio[0, 2], "off: the muted head is taught the class"
    frozen = torch.tensor([[True, False], [False, False], [False, False]])  # clip 2's video frozen, not blank
    out = FusionOutput(
        logits=live.detach(), weights=torch.full((3, 2), 0.5), audio_logits=logits, video_logits=live
    )
    loss, _ = fusion_loss(out, target, LossConfig(aux_weight=1.0, dead_uniform=True), dead, frozen)
    _, g_video = torch.autograd.grad(loss, (logits, live))
    assert g_video[2, 1] < g_video[2, 2], "a frozen stream, dead but not blank: its head keeps the class"
    zeros = torch.zeros(3, n, requires_grad=True)
    flat = FusionOutput(
        logits=live.detach(), weights=torch.full((3, 2), 0.5), audio_logits=zeros, video_logits=None
    )
    loss, _ = fusion_loss(flat, target, LossConfig(aux_weight=1.0, dead_uniform=True), dead)
    (g,) = torch.autograd.grad(loss, zeros)
    assert g[0].abs().max() < 1e-7, "flat logits are where a dead head's pull ends"


def _tiny(confidence: bool) -> FusionModel:
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=4, embed_dim=16, audio_width=8, audio_filters=16, confidence=confidence)
    return FusionModel(cfg).eval()


def test_confidence_scores_read_how_sure_each_branch_s_head_is():
    """With ``model.confidence`` the scores change when the classifier grows surer of each
    branch alone (the embeddings unchanged); without it they do not. Descent on the fused
    loss trains the score columns that read it, and nothing reaches the classifier through
    them (the scores' gradient leaves the classifier untouched)."""
    wave = torch.rand(3, 16_000) - 0.5
    frames = torch.randint(0, 256, (3, 2, 32, 32, 3), dtype=torch.uint8)
    for on in (True, False):
        model = _tiny(on)
        features = model.forward_features(wave, frames)
        before = model.forward_head(*features).scores
        with torch.no_grad():
            model.classifier.weight.mul_(4)
        after = model.forward_head(*features).scores
        assert torch.allclose(before, after) is not on, on
    model = _tiny(True)
    out = model(wave, frames)
    out.scores.sum().backward(retain_graph=True)
    assert model.classifier.weight.grad is None, "the confidence is detached"
    assert model.attention.audio_score.weight.grad[0, -2:].abs().sum() > 0
    model.zero_grad()
    fusion_loss(out, torch.tensor([0, 1, 2]), LossConfig(aux_weight=0.5))[0].backward()
    for score in (model.attention.audio_score, model.attention.video_score):
        assert score.weight.grad[0, -2:].abs().sum() > 0, "the fused loss trains the confidence columns"


def test_isolated_branches_learn_their_classes_from_their_own_head_only():
    """``model.isolate_branches``: the fused cross-entropy reaches an embedding only
    through its attention score (held constant here, it reaches none), while it still
    trains the classifier; the branch's own head trains the embedding. Off, the fused
    loss trains the embeddings through the mix as well."""
    target = torch.tensor([0, 1, 2])

    def grads(isolate: bool, term: str) -> dict[str, float]:
        torch.manual_seed(0)
        cfg = ModelConfig(
            num_classes=4, embed_dim=16, audio_width=8, audio_filters=16, isolate_branches=isolate
        )
        model = FusionModel(cfg)
        with torch.no_grad():  # constant scores: no path through the attention weights
            model.attention.audio_score.weight.zero_()
            model.attention.video_score.weight.zero_()
        a, v = torch.randn(3, 16, requires_grad=True), torch.randn(3, 16, requires_grad=True)
        out = model.forward_head(a, v, torch.zeros(3, 2), torch.zeros(3, 2))
        logits = {"fused": out.logits, "audio": out.audio_logits}[term]
        torch.nn.functional.cross_entropy(logits, target).backward()
        return {
            "a": float(a.grad.abs().sum()) if a.grad is not None else 0.0,
            "v": float(v.grad.abs().sum()) if v.grad is not None else 0.0,
            "classifier": float(model.classifier.weight.grad.abs().sum()),
        }

    isolated, joint = grads(True, "fused"), grads(False, "fused")
    assert isolated["a"] == 0 and isolated["v"] == 0 and isolated["classifier"] > 0
    assert joint["a"] > 0 and joint["v"] > 0
    own = grads(True, "audio")
    assert own["a"] > 0 and own["v"] == 0


def test_confidence_needs_the_heads_it_reads():
    from avfusion.config import ConfigError
    from avfusion.train import TrainConfig

    with pytest.raises(ConfigError, match="confidence needs"):
        TrainConfig(shards="s", out="o", model=ModelConfig(confidence=True), loss=LossConfig(aux_weight=0))
    with pytest.raises(ConfigError, match="confidence needs"):
        TrainConfig(shards="s", out="o", model=ModelConfig(confidence=True, shared_head=False))


def test_attention_agreement():
    def out(w_a, c_a, c_v):
        o = _fused_output(c_a, c_v)
        return FusionOutput(o.logits, torch.tensor([[w_a, 1 - w_a]]), o.audio_logits, o.video_logits)

    target = torch.tensor([0])
    assert attention_agrees(out(0.8, 0.9, 0.2), target).item()
    assert not attention_agrees(out(0.2, 0.9, 0.2), target).item()
    assert attention_agrees(out(0.2, 0.3, 0.9), target).item()


def test_presets_are_selectable_by_name(tmp_path, monkeypatch):
    from avfusion.config import from_dict, load_section, load_yaml, presets
    from avfusion.train import TrainConfig

    assert {"small", "vggsound"} <= set(presets())
    monkeypatch.chdir(tmp_path)
    for name in ("small", "vggsound"):
        cfg = from_dict(TrainConfig, {**load_yaml(name)["train"], "shards": "s", "out": "o"})
        assert cfg.model.audio_frontend == "gabor" and cfg.loss.dead_weight > 0
    assert (
        load_section(
            __import__("avfusion.config", fromlist=["ClipSpec"]).ClipSpec, "small", "clip"
        ).frame_size
        == 64
    )
    (tmp_path / "mine.yaml").write_text("train:\n  epochs: 3\n")
    assert load_yaml("mine.yaml") == {"train": {"epochs": 3}}, "a path keeps working"


def test_each_bench_variant_changes_its_ingredient_of_the_recipe():
    from jobs.bench.robustness import ABLATIONS, recipe

    base = recipe("small", "s", None, 0)
    changed = {name: change(base) for name, change in ABLATIONS.items()}
    assert all(cfg != base for cfg in changed.values())
    assert changed["conv front end"].model.audio_frontend == "conv"
    assert not changed["no content augmentation"].model.spec_augment
    assert changed["no dead-modality term"].loss.dead_weight == 0 and changed["no mixup"].mixup_alpha == 0


def test_subset_selects_folds_by_key_or_id():
    from avfusion.loader import Subset

    folds = {"avf_dog_01": 0, "avf_dog_02": 1, "syn00_0001_000000": 2}
    val = Subset(folds=folds, fold=0, holdout=True)
    train = Subset(folds=folds, fold=0, holdout=False)
    assert val.keeps("avf_dog_01_000000", "train") and not train.keeps("avf_dog_01_000000", "train")
    assert train.keeps("avf_dog_02_000000", None) and train.keeps("syn00_0001_000000", None)
    assert not train.keeps("unknown_000000", "train") and not val.keeps("unknown_000000", "test")
    assert Subset(split="test").keeps("x", "test") and not Subset(split="test").keeps("x", "train")


@pytest.fixture(scope="module")
def trained_fused(tmp_path_factory, synthetic_shards):
    """The fused model trained with the small recipe on the synthetic set (fixed seed),
    its label map and the decoded test clips. Trained in a process of its own: in the
    whole suite's process, state earlier tests left behind trained a different model
    (muted-audio agreement 0.69 there, 1.00 for seeds 0-3 in a fresh process)."""
    import subprocess
    import sys
    from pathlib import Path

    from avfusion.checkpoint import model_from_checkpoint
    from avfusion.loader import Dataset, data_loader, eval_stages

    run = tmp_path_factory.mktemp("attention") / "run"
    script = (
        "import dataclasses, sys, torch\n"
        "from avfusion.distributed import DistEnv\n"
        "from avfusion.train import train\n"
        "from jobs.bench.robustness import recipe\n"
        "cfg = dataclasses.replace(recipe('small', sys.argv[1], epochs=25, seed=0), out=sys.argv[2])\n"
        "train(cfg, DistEnv(0, 1, 0, torch.device('cpu')))\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", script, str(synthetic_shards), str(run)], check=True, cwd=root)
    model, ckpt = model_from_checkpoint(run / "last.pt")
    data = Dataset.open(str(synthetic_shards))
    batches = list(
        data_loader(
            eval_stages(data.urls, 16, split="test", compact_frames=False, collation_fn=lambda xs: xs), 0
        )
    )
    return model, ckpt["label_map"], batches


@pytest.fixture(scope="module")
def every_clip(synthetic_shards):
    """Every synthetic clip, train and test, decoded: routing to the live stream is a
    property of the attention, not of generalisation, and 8 test clips per modality
    leave one clip worth 12 points (a machine's float rounding flipped it)."""
    from avfusion.loader import Dataset, data_loader, eval_stages

    data = Dataset.open(str(synthetic_shards))
    stages = eval_stages(data.urls, 16, split=None, compact_frames=False, collation_fn=lambda xs: xs)
    return [s for batch in data_loader(stages, 0) for s in batch]


@pytest.fixture(scope="module")
def attention_shifts(trained_fused):
    """The attention on the synthetic test clips: clean, muted audio, black frames."""
    from avfusion.evaluation.conditions import Condition
    from avfusion.evaluation.run import evaluate_conditions

    model, _, batches = trained_fused
    res = evaluate_conditions(
        {"fused": model}, batches, [Condition.parse(c) for c in ("normal", "muted_audio", "black_frames")]
    )
    out = {c.name: r["fused"] for c, r in res.items()}
    for r in out.values():
        assert r["max_weight_sum_error"] < 1e-5
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    "carrier,dead", [("audio", "black_frames"), ("audio", "frozen_video"), ("video", "muted_audio")]
)
def test_with_one_stream_dead_the_fused_prediction_is_the_live_stream_s_own(
    trained_fused, every_clip, carrier, dead
):
    """Classes carried by one modality only, the other stream dead: the fused model gives
    the dead stream little weight, and (audio-carried classes; see below) predicts what the
    live stream's own head predicts on most clips."""
    from avfusion.evaluation.conditions import Condition, corrupt
    from avfusion.synth import DEFAULT_CLASSES

    model, label_map, _ = trained_fused
    classes = {label_map[c.name] for c in DEFAULT_CLASSES if c.informative == carrier}
    samples = [corrupt(s, Condition.parse(dead), 0) for s in every_clip if int(s["target"]) in classes]
    with torch.no_grad():
        out = model(
            torch.from_numpy(np.stack([s["waveform"] for s in samples])),
            torch.from_numpy(np.stack([s["frames"] for s in samples])),
        )
    own = out.audio_logits if carrier == "audio" else out.video_logits
    same = (out.logits.argmax(1) == own.argmax(1)).float().mean().item()
    w_dead = out.weights[:, 1 if carrier == "audio" else 0].mean().item()
    print(
        f"{dead} on {carrier}-carried clips: fused = {carrier} head on {same:.2f}, "
        f"dead stream's weight {w_dead:.3f}"
    )
    assert len(samples) >= 32 and w_dead <= 0.3 and same >= 0.75, (len(samples), w_dead, same)


@pytest.mark.slow
@pytest.mark.parametrize("condition", ["normal", "audio_gaussian_noise@3+video_gaussian_noise@3"])
def test_where_both_streams_carry_the_class_fusion_is_right_as_often_as_either_head(
    trained_fused, every_clip, condition
):
    """Classes carried by both streams, clean and with both streams noisy: the fused
    prediction is right at least as often as each branch's own head alone."""
    from avfusion.evaluation.conditions import Condition, corrupt
    from avfusion.evaluation.run import as_numpy
    from avfusion.synth import DEFAULT_CLASSES

    model, label_map, _ = trained_fused
    classes = {label_map[c.name] for c in DEFAULT_CLASSES if c.informative == "both"}
    cond = Condition.parse(condition)
    samples = [corrupt(as_numpy(s), cond, 0) for s in every_clip if int(s["target"]) in classes]
    target = torch.tensor([int(s["target"]) for s in samples])
    with torch.no_grad():
        out = model(
            torch.from_numpy(np.stack([s["waveform"] for s in samples])),
            torch.from_numpy(np.stack([s["frames"] for s in samples])),
        )
    right = {
        name: int((logits.argmax(1) == target).sum())
        for name, logits in (("fused", out.logits), ("audio", out.audio_logits), ("video", out.video_logits))
    }
    print(f"{condition}: right of {len(samples)}: {right}")
    assert len(samples) >= 32 and right["fused"] >= max(right["audio"], right["video"]), right


@pytest.mark.slow
def test_the_signals_tell_a_dead_stream_from_a_live_one(trained_fused, synthetic_shards):
    """On the trained model, a muted track or black frames stand apart from the same clips
    clean by the embedding's distance to the training clips' (AUROC near 1) and by the
    weight the dead-modality term taught; a corruption that leaves the picture nearly as
    it was (one frame of eight dropped, its neighbour repeated) does not (near 0.5)."""
    from avfusion.evaluation.conditions import Condition
    from avfusion.evaluation.signals import SIGNALS, signal_aurocs
    from avfusion.loader import Dataset, data_loader, eval_stages

    model, _, batches = trained_fused
    data = Dataset.open(str(synthetic_shards))
    training = data_loader(
        eval_stages(data.urls, 16, split="train", compact_frames=False, collation_fn=lambda xs: xs), 0
    )
    names = ("normal", "muted_audio", "black_frames", "drop_frames@1")
    conds = [Condition.parse(n) for n in names]
    figures = signal_aurocs(model, {}, training, batches, conds)
    res = {c.name: r["auroc"] for c, r in figures.items()}
    assert set(res) == {"muted_audio", "black_frames", "drop_frames@1"}  # clean is the reference
    assert set(res["muted_audio"]) == set(SIGNALS) - {"disagreement"}  # no unimodal model given
    for dead in ("muted_audio", "black_frames"):
        assert min(res[dead]["distance"], res[dead]["head energy"]) >= 0.95, res[dead]
        assert res[dead]["weight"] >= 0.8, res[dead]  # the dead-modality term's doing
    assert 0.3 <= res["drop_frames@1"]["distance"] <= 0.7, res["drop_frames@1"]
    alarms = {c.name: r["false alarms"] for c, r in figures.items()}
    assert alarms["muted_audio"]["distance"] == 0.0  # every muted clip is further than any clean one
    assert alarms["drop_frames@1"]["distance"] >= 0.5  # to catch 3/4 of them, most clean clips too


@pytest.mark.slow
def test_muting_moves_attention_to_video(attention_shifts):
    """Muted audio: the weight must move to video by a margin."""
    normal, muted = attention_shifts["normal"], attention_shifts["muted_audio"]
    print(f"w_audio clean {normal['w_audio']:.3f} -> muted {muted['w_audio']:.3f}")
    assert normal["w_audio"] - muted["w_audio"] >= 0.15, (normal, muted)


@pytest.mark.slow
def test_black_frames_move_attention_to_audio(attention_shifts):
    """Black frames: the video weight falls below its clean weight and near the
    dead-stream goal (≤ 0.15 on the bench's k-fold mean; one seeded run here, held to
    0.2). The clean weight is already low where video is the weaker stream, so the goal,
    not a fixed margin, is what is held."""
    normal, black = attention_shifts["normal"], attention_shifts["black_frames"]
    print(f"w_video clean {normal['w_video']:.3f} -> black {black['w_video']:.3f}")
    assert black["w_video"] <= 0.2 and black["w_video"] < normal["w_video"], (normal, black)


def test_bench_folds_keep_every_source_in_one_fold(tmp_path):
    """The bench's k-fold regrouping of the shipped 5 folds never splits a fold, so no
    recording or picture reaches both sides; the synthetic assignment is stratified."""
    import csv

    from avfusion import sample_data
    from jobs.bench.robustness import merge_folds, write_folds

    shipped = sample_data.read_folds()
    merged = {
        c: int(f) for c, f in csv.reader(open(merge_folds(sample_data.folds_csv(), tmp_path / "f.csv", 3)))
    }
    assert merged.keys() == shipped.keys() and set(merged.values()) == {0, 1, 2}
    for clip, fold in shipped.items():
        assert merged[clip] == fold % 3
    labels = tmp_path / "labels.csv"
    labels.write_text("".join(f"c{i},0,{'ab'[i % 2]},train\n" for i in range(12)))
    folds = {c: int(f) for c, f in csv.reader(open(write_folds(labels, tmp_path / "s.csv", 3)))}
    for label in "ab":
        assert sorted(f for c, f in folds.items() if "ab"[int(c[1:]) % 2] == label) == [0, 0, 1, 1, 2, 2]


def _fold(fused, audio, video, w_clean=0.7, w_lowpass=0.3, lowpass_fused=0.5):
    """One fold's evaluation results as ``evaluate_fold`` returns them (fused model beside
    both unimodal models), with a low-pass condition on the audio that leaves the audio
    head as sure as on clean clips (0.6)."""
    from avfusion.evaluation.conditions import Condition

    def row(f, a, v, w_a):
        fused_row = {"top1": f, "w_audio": w_a, "w_video": 1 - w_a, "agreement": 1.0}
        fused_row.update(
            audio_head_top1=a - 0.01, video_head_top1=v, audio_head_sure=0.6, video_head_sure=0.4
        )
        return {"fused": fused_row, "audio-only": {"top1": a}, "video-only": {"top1": v}}

    names = ("normal", "muted_audio", "audio_gaussian_noise@5", "black_frames", "frozen_video")
    res = {Condition.parse(n): row(fused, audio, video, w_clean) for n in names}
    res.update({Condition.parse(n): row(fused, audio, video, 1 - w_clean) for n in ("gaussian_blur@5",)})
    res[Condition.parse("video_gaussian_noise@5")] = row(fused, audio, video, w_clean)
    res[Condition.parse("audio_lowpass@3")] = row(lowpass_fused, 0.15, video, w_lowpass)
    return res


def test_the_bench_reports_margin_folds_won_own_heads_and_destroyed_streams():
    """fold_figures carries the margin, the win and the own heads; the goals count folds
    won; a destroyed stream from a family training never draws is judged apart: fused ÷
    the other stream's model and the stream's weight ÷ its clean weight."""
    from jobs.bench.robustness import (
        aggregate,
        destroyed_rows,
        fold_figures,
        goals,
        per_fold_rows,
        stream_figures,
        trained_family,
    )

    folds = [_fold(0.80, 0.70, 0.40), _fold(0.60, 0.70, 0.40), _fold(0.85, 0.70, 0.40)]
    figures = [fold_figures(f) for f in folds]
    assert figures[0]["margin: fused - best unimodal"] == pytest.approx(0.10)
    assert [f["fused >= best unimodal"] for f in figures] == [1.0, 0.0, 1.0]
    assert figures[0]["top1 fused's audio head"] == pytest.approx(0.69)
    rows = dict((g, (m, ok)) for g, m, ok in goals(aggregate(figures), 0.1, 3))
    assert rows["fused ≥ best unimodal on ≥ 3 of 3 folds"] == ("2 of 3", False)
    assert rows["fused ≥ best unimodal + 0.03 (mean)"][1] is True  # 0.750 vs 0.700
    assert not any("moves" in g for g in rows)  # a fixed corruption list no longer sets a goal
    assert [r[0] for r in per_fold_rows(figures)] == [0, 1, 2]

    streams = {}
    for f in folds:
        for cond, values in stream_figures(f).items():
            for k, v in values.items():
                streams.setdefault(cond, {}).setdefault(k, []).append(v)
    low = streams["audio_lowpass@3"]
    assert low["fused / other-only"] == pytest.approx([1.25] * 3)  # 0.5 against video-only 0.4
    assert low["weight share"] == pytest.approx([0.3 / 0.7] * 3)
    assert low["head top-1 share"] == pytest.approx([0.14 / 0.69] * 3)  # the fused model's audio head
    assert low["head sure share"] == pytest.approx([1.0] * 3)
    assert trained_family("muted_audio") and not trained_family("audio_lowpass@3")
    evidence = {"audio_lowpass@3": [0.1, 0.2, 0.15], "muted_audio": [0.0] * 3, "fog@3": [0.9] * 3}
    table = destroyed_rows(evidence, streams)
    assert [(r[0], r[1], r[-1]) for r in table] == [
        ("audio_lowpass@3", "held out", True),
        ("muted_audio", "trained", False),  # kept its clean weight (share 1.0 > 0.5)
    ]
    assert table[0][5:7] == (f"{0.14 / 0.69:.3f}", "1.000")
    rows = dict((g, (m, ok)) for g, m, ok in goals(aggregate(figures), 0.1, 3, table))
    assert rows["destroyed stream (held out families): fused ≥ 0.9 × other, weight ≤ ½ clean"][1]
    assert not rows["destroyed stream (trained families): fused ≥ 0.9 × other, weight ≤ ½ clean"][1]

    from jobs.bench.robustness import signal_rows

    signals = {"audio_lowpass@3": {"weight": [0.6, 0.7, 0.8], "distance": [0.9, 0.8, 0.7]}}
    assert signal_rows(table, signals) == [
        ("audio_lowpass@3", "held out", "0.70", "–", "–", "0.80", "–"),  # SIGNALS' order
        ("muted_audio", "trained", "–", "–", "–", "–", "–"),
    ]

    from jobs.bench.robustness import gate_rows

    def figs(share, ratio, margin):
        return {"weight share": [share] * 3, "fused / other-only": [ratio] * 3, "margin": [margin] * 3}

    gates = {
        "audio_lowpass@3": {
            "distance": {
                "0.00": figs(0.9, 0.8, 0.08),
                "0.10": figs(0.7, 0.85, 0.06),
                "0.25": figs(0.45, 0.95, 0.04),  # the first rate meeting all three
                "0.50": figs(0.2, 1.0, -0.05),  # the clean margin spent
            }
        }
    }
    assert gate_rows(table, gates) == [
        ("audio_lowpass@3", "held out", "distance", "0.70 / +0.060", "0.45 / +0.040", "0.20 / -0.050", "0.25")
    ]
    gates["audio_lowpass@3"]["distance"]["0.25"] = figs(0.45, 0.95, 0.02)
    assert gate_rows(table, gates)[0][-1] == "none"


def test_a_run_kept_in_out_counts_as_finished_only_when_every_epoch_trained(tmp_path):
    """The bench evaluates a run ``--out`` already holds only if it trained every epoch
    (a run cut short is trained on, resuming from its checkpoint)."""
    import json
    from dataclasses import replace

    from jobs.bench.robustness import finished, recipe

    cfg = replace(recipe("small", "shards", epochs=3, seed=0), out=str(tmp_path))
    assert not finished(cfg)  # nothing there
    (tmp_path / "last.pt").write_bytes(b"x")
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(2)))
    assert not finished(cfg)  # epochs 0-1 of 3
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2}) + "\n")
    assert finished(cfg)
    (tmp_path / "last.pt").unlink()
    assert not finished(cfg)  # metrics without the weights
