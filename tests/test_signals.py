"""The per-clip signals' arithmetic: AUROC, the training embeddings' Gaussian, the
divergence of two heads (the signals on a trained model: tests/test_recipe.py)."""

import numpy as np
import pytest
import torch

from avfusion.evaluation.signals import Gaussian, auroc, false_alarms, js_divergence


def test_auroc_counts_corrupted_above_clean_and_ties_half():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert auroc(np.ones(4), np.ones(3)) == 0.5
    # pairs: 1 > 0, 1 = 1 (half), 1 < 2, and 3 above all three: (1 + 0.5 + 0 + 3) / 6
    assert auroc(np.array([0.0, 1.0, 2.0]), np.array([1.0, 3.0])) == pytest.approx(0.75)
    assert np.isnan(auroc(np.array([]), np.array([1.0])))
    assert np.isnan(auroc(np.array([0.0, 1.0]), np.array([np.nan, 2.0])))  # not a half-blind 0.5


def test_false_alarms_are_the_clean_clips_flagged_by_the_threshold_that_catches_three_quarters():
    corrupted = np.array([1.0, 2.0, 3.0, 4.0])  # catching 3 of 4 takes the threshold 2
    assert false_alarms(np.array([0.0, 1.0, 1.5, 2.0, 5.0]), corrupted) == pytest.approx(2 / 5)
    assert false_alarms(np.array([0.0, 0.5]), corrupted) == 0.0
    assert false_alarms(np.array([0.0, 0.5, 3.0, 9.0]), corrupted, caught=0.5) == pytest.approx(0.5)
    assert np.isnan(false_alarms(np.array([0.0]), np.array([np.nan, 1.0])))


def test_the_distance_is_short_along_what_the_training_clips_spread_over():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 2)) * np.array([10.0, 0.1]) + np.array([5.0, -1.0])
    g = Gaussian.fit(x, shrink=0.0)
    along, across = g.distance(np.array([[15.0, -1.0], [5.0, 0.0]]))
    assert along == pytest.approx(1.0, rel=0.05)  # one standard deviation of the wide axis
    assert across == pytest.approx(10.0, rel=0.05)  # one unit is ten of the narrow axis'
    assert g.distance(g.mean[None])[0] == pytest.approx(0.0, abs=1e-9)
    # shrinkage keeps a degenerate set (fewer clips than dimensions) invertible
    assert np.isfinite(Gaussian.fit(rng.normal(size=(3, 8))).distance(np.zeros((1, 8)))).all()
    assert Gaussian.fit(np.array([[1.0], [3.0]]), shrink=0.0).distance(np.array([[4.0]]))[0] == pytest.approx(
        np.sqrt(2.0)  # one dimension: (4 - 2)² / variance 2
    )


def test_two_heads_agreeing_diverge_by_nothing_and_disjoint_ones_by_log_2():
    p = torch.tensor([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0]])
    q = torch.tensor([[0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])
    assert js_divergence(p, q) == pytest.approx([0.0, np.log(2)], abs=1e-6)


def _model(**changes):
    from avfusion.model import FusionModel, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=4, embed_dim=8, audio_width=8, audio_filters=16, **changes)
    return FusionModel(cfg).eval()


def test_each_stream_gets_the_signals_its_model_has():
    """With own heads and a unimodal model, all five; with no own heads (aux_weight 0),
    the weight and the distance only; only the streams asked for."""
    from avfusion.evaluation.signals import SIGNALS, clip_signals, fit_embeddings

    wave, frames = torch.randn(3, 16_000), torch.randint(0, 255, (3, 2, 32, 32, 3), dtype=torch.uint8)
    samples = [{"waveform": w.numpy(), "frames": f.numpy()} for w, f in zip(wave, frames, strict=True)]
    fused = _model()
    gaussians = fit_embeddings(fused, [samples])
    alone = {"audio": _model(modalities="audio")}
    both = clip_signals(fused, gaussians, alone, wave, frames)
    assert set(both["audio"]) == set(SIGNALS) and set(both["video"]) == set(SIGNALS) - {"disagreement"}
    assert all(v.shape == (3,) and np.isfinite(v).all() for s in both.values() for v in s.values())
    bare = _model(aux_heads=False, confidence=False)
    only = clip_signals(bare, fit_embeddings(bare, [samples]), alone, wave, frames, streams=("video",))
    assert set(only) == {"video"} and set(only["video"]) == {"weight", "distance"}


def _outputs(a, v, weight_audio, fused_right, video_head_right, video_only_right):
    """A fused model's and the unimodal models' outputs on 4 clips of 2 classes (target 0):
    right where asked."""
    from avfusion.model import Features, FusionOutput

    def logits(right):
        return torch.tensor([[1.0, 0.0] if r else [0.0, 1.0] for r in right])

    w = torch.tensor([[weight_audio, 1 - weight_audio]] * 4)
    fused = FusionOutput(logits(fused_right), w, logits([True] * 4), logits(video_head_right))
    alone = FusionOutput(logits(video_only_right), torch.tensor([[0.0, 1.0]] * 4), None, None)
    audio_alone = FusionOutput(logits([True] * 4), torch.tensor([[1.0, 0.0]] * 4), None, None)
    return {
        "fused": (Features(a, v), fused),
        "audio-only": (Features(a, None), audio_alone),
        "video-only": (Features(None, v), alone),
    }


def test_a_gate_drops_the_stream_where_its_signal_stands_above_the_clean_clips():
    """Dropping audio on the clips whose distance is above the clean clips' top quarter:
    every far (corrupted) clip loses its weight and takes the video head's answer, one
    clean clip in four does too; rate 0 is the model as it is."""
    from avfusion.evaluation.conditions import NORMAL, Condition
    from avfusion.evaluation.signals import Gaussian, SignalTally

    tally = SignalTally({m: Gaussian(np.zeros(2), np.eye(2)) for m in ("audio", "video")})
    v = torch.zeros(4, 2)
    near = torch.tensor([[0.1, 0.0], [0.2, 0.0], [0.3, 0.0], [0.4, 0.0]])
    video_head = [True, True, False, False]  # right on half the clips, as the video-only model
    target = torch.zeros(4, dtype=torch.long)
    tally(NORMAL, _outputs(near, v, 0.8, [True] * 4, video_head, video_head), target)
    lowpass = Condition.parse("audio_lowpass@3")
    tally(lowpass, _outputs(near * 100, v, 0.8, [False] * 4, video_head, video_head), target)
    gates = tally.gates(rates=(0.25,))[lowpass]["distance"]
    assert gates[0.0] == {"weight share": 1.0, "fused / other-only": 0.0, "clean top1": 1.0}
    # clean: the farthest clip (0.4, video head wrong there) is dropped; corrupted: all four
    assert gates[0.25] == pytest.approx({"weight share": 0.0, "fused / other-only": 1.0, "clean top1": 0.75})
    assert set(tally.gates(rates=(0.25,))[lowpass]) == {
        "weight",
        "distance",
        "head sure",
        "head energy",
        "disagreement",
    }
    # without a model of the other stream alone there is nothing to hold a gate against
    lonely = SignalTally(tally.gaussians)
    for cond, sample in ((NORMAL, near), (lowpass, near * 100)):
        outs = _outputs(sample, v, 0.8, [True] * 4, video_head, video_head)
        del outs["video-only"]
        lonely(cond, outs, target)
    assert lonely.gates() == {} and lowpass in lonely.figures()
