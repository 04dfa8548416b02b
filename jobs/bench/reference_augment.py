"""Training augmentation per clip in numpy: what ``avfusion.augment.BatchAugment`` reproduces.

The tests hold the batched augmentation to it (same draws, same distribution), and
``avfusion bench loader`` measures it as the per-clip path. Both need it, and a
benchmark cannot import ``tests/``, so it lives here, outside the library that
training imports. Modality dropout applies the evaluation corruptions
(``avfusion.corruptions``) at training's severities.
"""

from __future__ import annotations

import numpy as np

from avfusion.augment import AUDIO_TRAIN, VIDEO_TRAIN, AugmentConfig
from avfusion.corruptions import apply


def shift_and_gain(wave: np.ndarray, rng: np.random.Generator, shift: bool, gain_db: float) -> np.ndarray:
    """Circular time shift (the event can start anywhere) and a random level."""
    if shift:
        wave = np.roll(wave, int(rng.integers(0, len(wave))))
    if gain_db > 0:
        wave = wave * np.float32(10 ** (rng.uniform(-gain_db, gain_db) / 20))
    return np.clip(wave, -1, 1).astype(np.float32)


def random_resized_crop(frames: np.ndarray, rng: np.random.Generator, min_scale: float) -> np.ndarray:
    """One crop (area min_scale–100 %, aspect 3/4–4/3) for all frames of a clip, so
    motion stays consistent, resized back to the frame size (bilinear)."""
    import torch

    t, h, w, _ = frames.shape
    area = h * w * rng.uniform(min_scale, 1.0)
    aspect = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
    cw = int(min(w, max(8, round(np.sqrt(area * aspect)))))
    ch = int(min(h, max(8, round(np.sqrt(area / aspect)))))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = torch.from_numpy(np.ascontiguousarray(frames[:, y0 : y0 + ch, x0 : x0 + cw]))
    crop = crop.permute(0, 3, 1, 2).float()
    out = torch.nn.functional.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def color_jitter(frames: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation each scaled by a factor in 1 ± strength."""
    b, c, sat = rng.uniform(1 - strength, 1 + strength, size=3)
    x = frames.astype(np.float32) * b
    x = (x - x.mean()) * c + x.mean()
    gray = x.mean(axis=-1, keepdims=True)
    return ((x - gray) * sat + gray + 0.5).clip(0, 255).astype(np.uint8)


def temporal_crop(
    sample: dict, rng: np.random.Generator, seconds: float, n_frames: int, sample_rate: int = 16_000
) -> dict:
    """A random window of the waveform and a random ordered subset of the frames.
    Both halve the cost of a training step on a CPU and act as augmentation; the
    model pools over time, so evaluation still sees the whole clip."""
    wave, frames = sample["waveform"], sample["frames"]
    n = int(seconds * sample_rate)
    if 0 < n < len(wave):
        start = int(rng.integers(0, len(wave) - n + 1))
        wave = wave[start : start + n]
    if 0 < n_frames < len(frames):
        frames = frames[np.sort(rng.choice(len(frames), size=n_frames, replace=False))]
    return {**sample, "waveform": wave, "frames": frames}


def augment_content(sample: dict, cfg: AugmentConfig, rng: np.random.Generator) -> dict:
    """Content augmentation of one decoded sample; the label and key are untouched."""
    frames = sample["frames"]
    frames = random_resized_crop(frames, rng, cfg.crop_scale) if cfg.crop_scale < 1 else frames
    if cfg.flip and rng.random() < 0.5:
        frames = frames[:, :, ::-1]
    if cfg.color_jitter > 0:
        frames = color_jitter(frames, rng, cfg.color_jitter)
    return {
        **sample,
        "waveform": shift_and_gain(sample["waveform"], rng, cfg.shift, cfg.gain_db),
        "frames": np.ascontiguousarray(frames),
    }


class Augment:
    """The per-clip numpy reference of ``avfusion.augment.BatchAugment``, usable as a
    loader ``augment`` stage. Deterministic: the generator is seeded by (seed,
    data-loader worker id)."""

    def __init__(self, cfg: AugmentConfig, seed: int = 0, sample_rate: int = 16_000):
        self.cfg, self.seed, self.sample_rate = cfg, seed, sample_rate
        self._rng: np.random.Generator | None = None

    def __call__(self, sample: dict) -> dict:
        if not self.cfg.enabled:
            return sample
        if self._rng is None:  # created in the data-loader worker, seeded by its id
            import torch

            info = torch.utils.data.get_worker_info()
            self._rng = np.random.default_rng([self.seed, info.id if info else 0])
        rng = self._rng
        if self.cfg.crop_seconds or self.cfg.crop_frames:
            sample = temporal_crop(sample, rng, self.cfg.crop_seconds, self.cfg.crop_frames, self.sample_rate)
        if self.cfg.content:
            sample = augment_content(sample, self.cfg, rng)
        u = rng.random()
        if u < self.cfg.p_audio:
            sample = apply(str(rng.choice(AUDIO_TRAIN)), sample, int(rng.integers(3, 6)), rng)
        elif u < self.cfg.p_audio + self.cfg.p_video:
            sample = apply(str(rng.choice(VIDEO_TRAIN)), sample, int(rng.integers(3, 6)), rng)
        if rng.random() < self.cfg.p_drop_frames:
            sample = apply("drop_frames", sample, int(rng.integers(1, 3)), rng)
        return sample
