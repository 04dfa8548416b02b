"""Corruptions of decoded clips, shared by training augmentation and robustness eval.

Each corruption is a pure function of (waveform or frames, severity 1–5, rng) on
numpy arrays: float32 waveform in [-1, 1], uint8 frames (T, H, W, 3). Applying them
to decoded arrays (not files) means the same clip is compared across conditions,
and a seeded ``numpy.random.Generator`` makes every application reproducible.
Parameters per severity follow ImageNet-C / VGGSound-C where those define them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------------------- audio


def mute(wave: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Silence (a dead microphone or a muted track)."""
    return np.zeros_like(wave)


AUDIO_SNR_DB = {1: 20.0, 2: 10.0, 3: 5.0, 4: 0.0, 5: -5.0}


def audio_gaussian_noise(wave: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """White noise at a signal-to-noise ratio of 20, 10, 5, 0, −5 dB (severity 1–5),
    relative to the clip's own power (a floor keeps silent clips from staying clean)."""
    power = max(float(np.mean(wave ** 2)), 1e-4)
    noise_power = power / 10 ** (AUDIO_SNR_DB[severity] / 10)
    return np.clip(wave + rng.normal(0.0, np.sqrt(noise_power), wave.shape), -1, 1).astype(np.float32)


# ----------------------------------------------------------------------------- video


def black_frames(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """All frames black (camera covered, video track lost)."""
    return np.zeros_like(frames)


def frozen_video(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """The first frame repeated (a stalled stream): no motion, one picture."""
    return np.repeat(frames[:1], len(frames), axis=0)


def drop_frames(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Drop 1, 2, 3, 4 or 6 of 8 frames (scaled to T), each replaced by its nearest kept one."""
    t = len(frames)
    n_drop = min(t - 1, round({1: 1, 2: 2, 3: 3, 4: 4, 5: 6}[severity] * t / 8))
    keep = np.sort(rng.choice(t, size=t - n_drop, replace=False))
    nearest = keep[np.abs(np.arange(t)[:, None] - keep[None, :]).argmin(axis=1)]
    return frames[nearest]


BLUR_SIGMA = {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.5, 5: 6.0}  # in pixels at 224²; scaled with frame size


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(3 * sigma + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return k / k.sum()


def _separable_blur(frames: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Convolve H and W with a 1-D kernel, reflecting at the edges (float32)."""
    r = len(kernel) // 2
    x = frames.astype(np.float32)
    for axis in (1, 2):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (r, r)
        xp = np.pad(x, pad, mode="reflect" if x.shape[axis] > r else "edge")
        out = np.zeros_like(x)
        for i, w in enumerate(kernel):
            out += w * np.take(xp, np.arange(i, i + x.shape[axis]), axis=axis)
        x = out
    return x


def gaussian_blur(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur, sigma 1, 2, 3, 4.5, 6 px at 224² (scaled to the frame size)."""
    sigma = BLUR_SIGMA[severity] * frames.shape[1] / 224
    return np.clip(_separable_blur(frames, _gaussian_kernel(sigma)) + 0.5, 0, 255).astype(np.uint8)


VIDEO_NOISE_STD = {1: 0.08, 2: 0.12, 3: 0.18, 4: 0.26, 5: 0.38}  # ImageNet-C gaussian_noise, on [0, 1]


def video_gaussian_noise(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian pixel noise, std 0.08–0.38 of full scale (ImageNet-C)."""
    noisy = frames / 255.0 + rng.normal(0.0, VIDEO_NOISE_STD[severity], frames.shape)
    return (np.clip(noisy, 0, 1) * 255 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Corruption:
    name: str
    modality: str  # "audio" or "video"
    fn: Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
    graded: bool  # False: severity has no effect (missing-modality conditions)


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in [
    Corruption("muted_audio", "audio", mute, False),
    Corruption("audio_gaussian_noise", "audio", audio_gaussian_noise, True),
    Corruption("black_frames", "video", black_frames, False),
    Corruption("frozen_video", "video", frozen_video, False),
    Corruption("drop_frames", "video", drop_frames, True),
    Corruption("gaussian_blur", "video", gaussian_blur, True),
    Corruption("video_gaussian_noise", "video", video_gaussian_noise, True),
]}


def apply(name: str, sample: dict, severity: int, rng: np.random.Generator) -> dict:
    """A copy of a decoded sample (``waveform``, ``frames``) with one corruption applied."""
    c = CORRUPTIONS[name]
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1–5, got {severity}")
    key = "waveform" if c.modality == "audio" else "frames"
    return {**sample, key: c.fn(sample[key], severity, rng)}


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class AugmentConfig:
    """Modality dropout / corruption during training, so attention learns to move to
    the modality that still carries information. Probabilities are per sample; at
    most one modality is corrupted, so a label stays recoverable."""

    enabled: bool = True
    p_audio: float = 0.25  # corrupt audio: mute (half of the time) or noise at a random severity
    p_video: float = 0.25  # corrupt video: black, frozen, blurred or noisy, random severity
    p_drop_frames: float = 0.1  # independent light frame dropping (temporal jitter)


AUDIO_TRAIN = ("muted_audio", "muted_audio", "audio_gaussian_noise")
VIDEO_TRAIN = ("black_frames", "gaussian_blur", "gaussian_blur", "video_gaussian_noise", "frozen_video")


class Augment:
    """A picklable per-sample augmentation for the loader's ``augment`` stage."""

    def __init__(self, cfg: AugmentConfig, seed: int = 0):
        self.cfg, self.seed = cfg, seed
        self._rng: np.random.Generator | None = None

    def __call__(self, sample: dict) -> dict:
        if not self.cfg.enabled:
            return sample
        if self._rng is None:  # created in the data-loader worker, seeded by its id
            import torch

            info = torch.utils.data.get_worker_info()
            self._rng = np.random.default_rng([self.seed, info.id if info else 0])
        rng = self._rng
        u = rng.random()
        if u < self.cfg.p_audio:
            sample = apply(str(rng.choice(AUDIO_TRAIN)), sample, int(rng.integers(3, 6)), rng)
        elif u < self.cfg.p_audio + self.cfg.p_video:
            sample = apply(str(rng.choice(VIDEO_TRAIN)), sample, int(rng.integers(3, 6)), rng)
        if rng.random() < self.cfg.p_drop_frames:
            sample = apply("drop_frames", sample, int(rng.integers(1, 3)), rng)
        return sample
