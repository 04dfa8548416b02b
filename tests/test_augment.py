"""Batched augmentation on the device (avfusion.augment) against the per-clip numpy
reference (jobs/bench/reference_augment.py): same draws, same distribution, labels kept,
seeded per (seed, rank, worker, epoch, step). The same code is the GPU path: the
tests run on every device present (CPU always)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from avfusion import augment as A
from avfusion.augment import AugmentConfig
from avfusion.loader import Batch
from jobs.bench.reference_augment import Augment, color_jitter, random_resized_crop

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _clips(b: int, t: int = 4, s: int = 32, n: int = 1600, seed: int = 0) -> Batch:
    """Decoded clips: textured frames (each frame its own level), non-silent audio."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(20, 200, (b, t, s, s, 3)) + 10 * np.arange(t)[None, :, None, None, None]
    wave = rng.uniform(-0.3, 0.3, (b, n)).astype(np.float32)
    return Batch(
        torch.from_numpy(wave),
        torch.from_numpy(frames.astype(np.uint8)),
        torch.arange(b) % 7,
        [f"c{i}" for i in range(b)],
    )


def _ramp(b: int, s: int = 64) -> np.ndarray:
    """Frames whose red channel is the column and green the row: a crop shows its box."""
    yy, xx = np.mgrid[0:s, 0:s]
    img = np.stack([xx * 4, yy * 4, np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    return np.broadcast_to(img, (b, 2, s, s, 3)).copy()


@pytest.mark.parametrize("device", DEVICES)
def test_crop_flip_and_jitter_equal_the_per_clip_reference_for_the_same_draws(device):
    """One clip at a time, the batched ops draw the reference's numbers in its order
    (crop box, flip, jitter factors), so the outputs agree up to resampling rounding."""
    frames = _clips(1, s=48).frames.numpy()[0]
    for seed in range(6):
        r = np.random.default_rng(seed)
        ref = random_resized_crop(frames, r, 0.5)
        ref = ref[:, :, ::-1] if r.random() < 0.5 else ref
        ref = color_jitter(np.ascontiguousarray(ref), r, 0.3)
        r = np.random.default_rng(seed)
        x = torch.from_numpy(frames[None]).to(device).permute(0, 1, 4, 2, 3).float()
        x = A.color_jitter(A.resized_crop_and_flip(x, r, 0.5, True), r, 0.3)
        ours = A._to_uint8(x)[0].cpu().numpy().astype(int)
        assert np.abs(ours - ref).mean() < 1.5, (seed, np.abs(ours - ref).mean())


@pytest.mark.parametrize("device", DEVICES)
def test_crop_statistics_and_flip_rate_match_the_reference(device):
    b = 400
    x = torch.from_numpy(_ramp(b)).to(device).permute(0, 1, 4, 2, 3).float()
    ours = A._to_uint8(A.resized_crop_and_flip(x, np.random.default_rng(1), 0.5, True)).cpu().numpy()
    r = np.random.default_rng(2)
    ref = []
    for f in _ramp(b):
        f = random_resized_crop(f, r, 0.5)
        ref.append(f[:, :, ::-1] if r.random() < 0.5 else f)

    def stats(out):
        out = np.asarray(out).astype(float)
        wf = (out[:, 0, 0, -1, 0] - out[:, 0, 0, 0, 0]) / 252  # signed: negative when mirrored
        hf = (out[:, 0, -1, 0, 1] - out[:, 0, 0, 0, 1]) / 252
        return np.abs(wf) * hf, np.log(np.abs(wf) / hf), (wf < 0).mean()

    (a1, r1, f1), (a2, r2, f2) = stats(ours), stats(ref)
    assert abs(a1.mean() - a2.mean()) < 0.03 and abs(a1.std() - a2.std()) < 0.03, (a1.mean(), a2.mean())
    assert 0.45 < a1.min() and a1.max() <= 1.0
    assert abs(r1.mean() - r2.mean()) < 0.04 and abs(r1.std() - r2.std()) < 0.03
    assert abs(f1 - 0.5) < 0.1 and abs(f2 - 0.5) < 0.1


def _dropout_counts(waves, frames, orig_frames):
    muted = (np.abs(waves).max(axis=1) == 0).mean()
    black = frames.reshape(len(frames), -1).max(axis=1) == 0
    frozen = [
        (f == f[:1]).all() and f.max() > 0 and not (o == o[:1]).all()
        for f, o in zip(frames, orig_frames, strict=True)
    ]
    return muted, black.mean(), np.mean(frozen)


@pytest.mark.parametrize("device", DEVICES)
def test_modality_dropout_rates_match_the_reference_and_labels_are_kept(device):
    cfg = AugmentConfig(p_audio=0.3, p_video=0.3, p_drop_frames=0.0)
    clips = _clips(600, t=3, s=16, n=400)
    out, soft = A.BatchAugment(cfg, num_classes=7, seed=0)(clips, device, epoch=0, step=0)
    assert torch.equal(out.target.cpu(), clips.target) and torch.equal(soft.argmax(1).cpu(), clips.target)
    ours = _dropout_counts(out.waveform.cpu().numpy(), out.frames.cpu().numpy(), clips.frames.numpy())
    aug = Augment(cfg, seed=0)
    ref_samples = [
        aug({"waveform": w.numpy(), "frames": f.numpy(), "target": 0})
        for w, f in zip(clips.waveform, clips.frames, strict=False)
    ]
    ref = _dropout_counts(
        np.stack([s["waveform"] for s in ref_samples]),
        np.stack([s["frames"] for s in ref_samples]),
        clips.frames.numpy(),
    )
    expected = (0.3 * 2 / 3, 0.3 * 2 / 6, 0.3 * 2 / 6)  # mute 2 of 3 audio picks, black 2 of 6, frozen 2 of 6
    for o, r, e in zip(ours, ref, expected, strict=False):
        tol = 4 * np.sqrt(e * (1 - e) / 600)
        assert abs(o - e) < tol and abs(r - e) < tol, (ours, ref, expected)
    both = (np.abs(out.waveform.cpu().numpy() - clips.waveform.numpy()).max(1) > 0) & (
        out.frames.cpu().numpy() != clips.frames.numpy()
    ).reshape(600, -1).any(1)
    assert not both.any(), "at most one modality of a clip is dropped"
    wave, frames = out.waveform.cpu().numpy(), out.frames.cpu().numpy()
    muted = np.abs(wave).max(1) == 0
    black = frames.reshape(600, -1).max(1) == 0
    frozen = (frames == frames[:, :1]).reshape(600, -1).all(1) & ~black
    dead = out.dead.cpu().numpy()
    assert (dead[:, 0] == muted).all() and (dead[:, 1] == (black | frozen)).all(), (
        "dead marks muted, black, frozen"
    )
    assert dead[:, 0].sum() > 0 and dead[:, 1].sum() > 0
    blank = out.blank.cpu().numpy()
    assert (blank[:, 0] == muted).all() and (blank[:, 1] == black).all(), "blank: muted and black, not frozen"
    assert frozen.sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_blur_and_noise_follow_the_reference(device):
    from avfusion.corruptions import gaussian_blur, video_gaussian_noise

    frames = _clips(2, t=2, s=40).frames
    x = frames.to(device).permute(0, 1, 4, 2, 3).float()
    ours = A._to_uint8(A.gaussian_blur(x, 3.0 * 40 / 224)).cpu().numpy().astype(int)
    ref = np.stack([gaussian_blur(f, 3, None) for f in frames.numpy()]).astype(int)
    assert np.abs(ours - ref).max() <= 1
    noisy = A._video_op("video_gaussian_noise", 4, x, torch.Generator(device=device).manual_seed(0))
    ref_noisy = video_gaussian_noise(frames.numpy(), 4, np.random.default_rng(0)).astype(float)
    assert abs((noisy - x).std().item() - (ref_noisy - frames.numpy()).std()) < 3


@pytest.mark.parametrize("device", DEVICES)
def test_temporal_crops_keep_ordered_frames_and_a_contiguous_window(device):
    cfg = AugmentConfig(p_audio=0, p_video=0, p_drop_frames=0, crop_frames=2, crop_seconds=0.05)
    clips = _clips(8, t=6, n=1600)
    out, _ = A.BatchAugment(cfg, num_classes=7)(clips, device, 0, 0)
    assert out.frames.shape[1] == 2 and out.waveform.shape == (8, 800)
    for i in range(8):
        picked = [
            next(j for j in range(6) if torch.equal(out.frames[i, k].cpu(), clips.frames[i, j]))
            for k in range(2)
        ]
        assert picked[0] < picked[1]
        w = clips.waveform[i].numpy()
        start = int(np.flatnonzero(np.isclose(w, out.waveform[i, 0].item()))[0])
        np.testing.assert_allclose(out.waveform[i].cpu().numpy(), w[start : start + 800])


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_under_a_seed_and_different_across_ranks_workers_epochs_steps(device):
    cfg = AugmentConfig(content=True, p_audio=0.3, p_video=0.3, p_drop_frames=0.2)
    clips = _clips(6)

    def run(rank=0, worker=0, epoch=0, step=0):
        b = Batch(clips.waveform, clips.frames, clips.target, clips.keys, worker=worker)
        out, soft = A.BatchAugment(cfg, num_classes=7, seed=3, rank=rank, mixup_alpha=0.4, mixup_prob=0.5)(
            b, device, epoch, step
        )
        return out.frames.cpu(), out.waveform.cpu(), soft.cpu()

    base = run()
    assert all(torch.equal(a, b) for a, b in zip(base, run(), strict=False))
    for other in (run(rank=1), run(worker=1), run(epoch=1), run(step=1)):
        assert not torch.equal(base[0], other[0])


def test_a_dead_stream_mixed_with_a_live_clip_is_not_dead():
    """Mixup blends a muted clip with another clip's sound: that audio is evidence of the
    other label, so only a stream dead in both clips stays marked dead."""
    cfg = AugmentConfig(p_audio=0.5, p_video=0.0, p_drop_frames=0.0)
    aug = A.BatchAugment(cfg, num_classes=7, seed=0, mixup_alpha=1.0, mixup_prob=1.0)
    clips = _clips(64, t=2, s=16, n=400)
    out, _ = aug(clips, "cpu", epoch=0, step=0)
    silent = np.abs(out.waveform.numpy()).max(1) == 0
    assert (out.dead[:, 0].numpy() == silent).all() and 0 < silent.sum() < 64
    assert not out.dead[:, 1].any()


def test_mixup_keeps_the_dominant_label():
    clips = _clips(6)
    mixed, soft = A.mixup(clips, 7, alpha=0.4, prob=1.0, rng=np.random.default_rng(0))
    torch.testing.assert_close(soft.sum(1), torch.ones(6))
    assert (soft[torch.arange(6), clips.target] >= 0.5).all() and torch.equal(mixed.target, clips.target)
    same, hard = A.mixup(clips, 7, alpha=0.4, prob=0.0, rng=np.random.default_rng(0))
    assert same is clips and torch.equal(hard.argmax(1), clips.target)


def test_dead_noise_marks_the_top_severity_of_audio_noise_dead_and_nothing_else():
    """With ``dead_noise`` the clips whose audio got -5 dB of noise (measured from the
    noise added, not read from the draw) are dead, not blank; 5 and 0 dB stay live; and
    the same draws without it leave them live."""
    clips = _clips(600, t=2, s=16, n=1600)
    cfg = AugmentConfig(p_audio=0.6, p_video=0.0, p_drop_frames=0.0)
    on = A.BatchAugment(replace(cfg, dead_noise=True), num_classes=7)
    off = A.BatchAugment(cfg, num_classes=7)
    out, _ = on(clips, "cpu", epoch=0, step=0)
    wave, clean = out.waveform.numpy().astype(np.float64), clips.waveform.numpy().astype(np.float64)
    muted = np.abs(wave).max(1) == 0
    noise = wave - clean
    snr_db = 10 * np.log10(clean.var(1) / np.maximum(noise.var(1), 1e-12))
    noisy = ~muted & (np.abs(noise).max(1) > 0)
    worst = noisy & (snr_db < -2.5)  # -5 dB against 0 and 5 dB (clipping only lowers the noise)
    assert worst.sum() > 10 and (noisy & ~worst).sum() > 20
    assert (out.dead[:, 0].numpy() == (muted | worst)).all()
    assert (out.blank[:, 0].numpy() == muted).all(), "noise is dead, never blank"
    same, _ = off(clips, "cpu", epoch=0, step=0)
    assert torch.equal(same.waveform, out.waveform), "the switch changes the labels, not the draws"
    assert (same.dead[:, 0].numpy() == muted).all()
