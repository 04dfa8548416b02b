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
