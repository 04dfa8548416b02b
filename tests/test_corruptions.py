"""Each corruption changes its input as documented, deterministically, monotone in severity."""

import numpy as np
import pytest

from avfusion import sample_data
from avfusion.augment import AugmentConfig
from avfusion.config import ClipSpec
from avfusion.corruptions import AUDIO_SNR_DB, CORRUPTIONS, LOWPASS_HZ, apply
from avfusion.decode import decode_clip
from avfusion.synth import tone_waveform
from jobs.bench.reference_augment import Augment

# Real photo frames (the bundled dog clip) and a quiet tone, so clipping to [-1, 1]
# does not bend the measured SNRs.
FRAMES = decode_clip(sample_data.clips_dir() / "avf_bird_01_000000.mp4", ClipSpec(frame_size=112)).frames
WAVE = tone_waveform(160_000, 16_000, 1, amp=0.1)[0]
GRADED = [n for n, c in CORRUPTIONS.items() if c.graded]


def _run(name, severity, seed=0):
    c = CORRUPTIONS[name]
    return c.fn(WAVE if c.modality == "audio" else FRAMES, severity, np.random.default_rng(seed))


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_deterministic_and_shape_preserving(name):
    a, b = _run(name, 3, seed=5), _run(name, 3, seed=5)
    np.testing.assert_array_equal(a, b)
    original = WAVE if CORRUPTIONS[name].modality == "audio" else FRAMES
    assert a.shape == original.shape and a.dtype == original.dtype
    assert not np.array_equal(a, original), f"{name} at severity 3 must change its input"


@pytest.mark.parametrize("name", GRADED)
def test_severity_is_monotone(name):
    original = (WAVE if CORRUPTIONS[name].modality == "audio" else FRAMES).astype(np.float64)
    distances = [np.abs(_run(name, s).astype(np.float64) - original).mean() for s in range(1, 6)]
    assert all(b >= a * 0.98 for a, b in zip(distances, distances[1:], strict=False)), distances
    assert distances[-1] > distances[0] * 1.2, distances


def test_missing_modality_conditions():
    assert not _run("muted_audio", 1).any()
    assert not _run("black_frames", 1).any()
    frozen = _run("frozen_video", 1)
    assert all(np.array_equal(f, FRAMES[0]) for f in frozen)
    dropped = _run("drop_frames", 5)  # 6 of 8 dropped: 2 distinct source frames remain
    sources = {next(i for i, f in enumerate(FRAMES) if np.array_equal(f, d)) for d in dropped}
    assert len(sources) == 2


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_audio_noise_hits_its_snr(severity):
    noisy = _run("audio_gaussian_noise", severity)
    noise = noisy - WAVE
    snr = 10 * np.log10(np.mean(WAVE**2) / np.mean(noise**2))
    assert snr == pytest.approx(AUDIO_SNR_DB[severity], abs=0.5)


@pytest.mark.parametrize("name", ["traffic_noise", "train_noise"])
def test_real_environmental_noise_is_mixed_at_snr(name):
    noisy = _run(name, 3)
    snr = 10 * np.log10(np.mean(WAVE**2) / np.mean((noisy - WAVE) ** 2))
    assert snr == pytest.approx(AUDIO_SNR_DB[3], abs=1.0)


def test_lowpass_removes_energy_above_cutoff():
    mixed = (
        0.3 * np.sin(2 * np.pi * 300 * np.arange(16_000) / 16_000)
        + 0.3 * np.sin(2 * np.pi * 3000 * np.arange(16_000) / 16_000)
    ).astype(np.float32)
    out = CORRUPTIONS["audio_lowpass"].fn(mixed, 3, np.random.default_rng(0))
    spectrum = np.abs(np.fft.rfft(out))
    assert LOWPASS_HZ[3] == 1000 and spectrum[3000] < 1e-3 * spectrum[300]


def test_contrast_and_brightness_do_what_they_say():
    assert _run("contrast", 5).std() < 0.1 * FRAMES.std()
    assert _run("brightness", 5).mean() > FRAMES.mean() + 60


def test_blur_removes_high_frequencies():
    def edges(x):
        return np.abs(np.diff(x.astype(np.float64), axis=2)).mean()

    for name in ("gaussian_blur", "defocus_blur", "motion_blur", "zoom_blur"):
        assert edges(_run(name, 5)) < 0.7 * edges(FRAMES), name


def test_apply_returns_a_copy_with_one_modality_changed():
    sample = {"waveform": WAVE, "frames": FRAMES, "target": 3}
    out = apply("gaussian_blur", sample, 2, np.random.default_rng(0))
    assert out["waveform"] is WAVE and out["target"] == 3 and out["frames"] is not FRAMES
    with pytest.raises(ValueError):
        apply("gaussian_blur", sample, 6, np.random.default_rng(0))


def test_training_augmentation_corrupts_at_most_one_modality_and_can_be_disabled():
    aug = Augment(AugmentConfig(p_audio=0.5, p_video=0.5, p_drop_frames=0.0), seed=0)
    both = 0
    for _ in range(200):
        out = aug({"waveform": WAVE, "frames": FRAMES})
        changed_a = not np.array_equal(out["waveform"], WAVE)
        changed_v = not np.array_equal(out["frames"], FRAMES)
        both += changed_a and changed_v
        assert changed_a or changed_v  # p_audio + p_video = 1
    assert both == 0
    off = Augment(AugmentConfig(enabled=False))
    sample = {"waveform": WAVE, "frames": FRAMES}
    assert off(sample) is sample


def test_the_report_marks_which_corruptions_destroy_a_modality_s_evidence():
    """Read off the unimodal baseline on the corrupted modality: at chance → destroys;
    as good as clean → harmless; between → degrades. No baseline, or a baseline at
    chance on clean input, → no verdict."""
    from avfusion.evaluation.conditions import Condition
    from avfusion.evaluation.report import evidence_left as evidence_by_condition
    from avfusion.evaluation.report import markdown_table

    def row(fused, audio, video):
        return {
            "fused": {"top1": fused, "top5": 1.0, "w_audio": 0.5, "w_video": 0.5, "agreement": 1.0},
            "audio-only": {"top1": audio, "top5": 1.0},
            "video-only": {"top1": video, "top5": 1.0},
        }

    def evidence_left(results, chance):  # keyed by name, as the assertions read it
        return {c.name: v for c, v in evidence_by_condition(results, chance).items()}

    results = {
        Condition.parse(c): r
        for c, r in {
            "normal": row(0.6, 0.5, 0.3),
            "muted_audio": row(0.3, 0.1, 0.3),
            "gaussian_blur@5": row(0.6, 0.5, 0.29),
            "video_gaussian_noise@5": row(0.5, 0.5, 0.2),
            "muted_audio+gaussian_blur@3": row(0.1, 0.1, 0.1),
        }.items()
    }
    left = evidence_left(results, chance=0.1)
    assert left["muted_audio"] == (0.0, "destroys")
    assert left["gaussian_blur@5"][1] == "harmless" and left["video_gaussian_noise@5"][1] == "degrades"
    assert "muted_audio+gaussian_blur@3" not in left and "normal" not in left
    table = markdown_table(results, chance=0.1)
    assert "evidence left (unimodal)" in table and "| 0.00 destroys |" in table
    no_video = {c: {m: v for m, v in r.items() if m != "video-only"} for c, r in results.items()}
    assert set(evidence_left(no_video, 0.1)) == {"muted_audio"}
    at_chance = {**results, Condition(): row(0.6, 0.5, 0.12)}
    assert set(evidence_left(at_chance, 0.1)) == {"muted_audio"}
    assert "evidence left" not in markdown_table(results)


def test_conditions_are_typed_records():
    """A condition carries its corruption, modality and severity; conditions with one
    name are one condition (the name seeds the corruption)."""
    from avfusion.evaluation.conditions import NORMAL, Condition, parse_conditions

    fog, muted, pair = parse_conditions("fog@2, muted_audio,muted_audio+fog@2")
    assert (fog.name, fog.corruption, fog.modality, fog.severity) == ("fog@2", "fog", "video", 2)
    assert (muted.corruption, muted.modality, muted.severity) == ("muted_audio", "audio", None)
    assert (pair.corruption, pair.modality, pair.severity) == (None, None, None)
    assert NORMAL.name == "normal" and NORMAL.corruption is None and Condition.parse("normal") == NORMAL
    assert muted == Condition((("muted_audio", 1),)) and len({muted, Condition((("muted_audio", 1),))}) == 1
    assert fog != Condition((("fog", 3),))
    with pytest.raises(ValueError, match="unknown corruption"):
        parse_conditions("normal,no_such_thing")
