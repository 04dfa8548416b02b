"""Corruptions of decoded clips for the robustness evaluation (``avfusion.evaluation``).

Each corruption is a pure function of (waveform or frames, severity 1–5, rng) on
numpy arrays: float32 waveform in [-1, 1], uint8 frames (T, H, W, 3). Applying them
to decoded arrays (not files) means the same clip is compared across conditions,
and a seeded ``numpy.random.Generator`` makes every application reproducible.
Parameters per severity follow ImageNet-C / VGGSound-C where those define them;
training's modality dropout (``avfusion.augment``) reuses them, batched on the device.
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
    power = max(float(np.mean(wave**2)), 1e-4)
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


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian taps, radius 3 sigma: ``gaussian_blur``, ``fog`` and the batched blur."""
    radius = max(1, int(3 * sigma + 0.5))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-(x**2) / (2 * sigma**2))
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
    return np.clip(_separable_blur(frames, gaussian_kernel(sigma)) + 0.5, 0, 255).astype(np.uint8)


VIDEO_NOISE_STD = {1: 0.08, 2: 0.12, 3: 0.18, 4: 0.26, 5: 0.38}  # ImageNet-C gaussian_noise, on [0, 1]


def video_gaussian_noise(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian pixel noise, std 0.08–0.38 of full scale (ImageNet-C)."""
    noisy = frames / 255.0 + rng.normal(0.0, VIDEO_NOISE_STD[severity], frames.shape)
    return (np.clip(noisy, 0, 1) * 255 + 0.5).astype(np.uint8)


SHOT_PHOTONS = {1: 60, 2: 25, 3: 12, 4: 5, 5: 3}  # ImageNet-C shot_noise


def shot_noise(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson (photon) noise with 60, 25, 12, 5, 3 photons per unit (ImageNet-C)."""
    lam = SHOT_PHOTONS[severity]
    return (np.clip(rng.poisson(frames / 255.0 * lam) / lam, 0, 1) * 255 + 0.5).astype(np.uint8)


IMPULSE_AMOUNT = {1: 0.03, 2: 0.06, 3: 0.09, 4: 0.17, 5: 0.27}  # ImageNet-C impulse_noise


def impulse_noise(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Salt-and-pepper noise on 3–27 % of pixel values (ImageNet-C)."""
    out = frames.copy()
    mask = rng.random(frames.shape) < IMPULSE_AMOUNT[severity]
    out[mask] = np.where(rng.random(int(mask.sum())) < 0.5, 0, 255).astype(np.uint8)
    return out


DEFOCUS_RADIUS = {1: 3, 2: 4, 3: 6, 4: 8, 5: 10}  # px at 224²


def defocus_blur(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Disc (out-of-focus) blur, radius 3–10 px at 224² (scaled to the frame size)."""
    r = max(1, round(DEFOCUS_RADIUS[severity] * frames.shape[1] / 224))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return _filter2d(frames, ((xx**2 + yy**2) <= r * r).astype(np.float32))


MOTION_LENGTH = {1: 6, 2: 10, 3: 15, 4: 20, 5: 28}  # px at 224²


def motion_blur(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Linear motion blur along a random direction, 6–28 px long at 224²."""
    length = max(2, round(MOTION_LENGTH[severity] * frames.shape[1] / 224))
    angle = rng.uniform(0, np.pi)
    kernel = np.zeros((length, length), np.float32)
    c = (length - 1) / 2
    for t in np.linspace(-c, c, 4 * length):
        kernel[int(round(c + t * np.sin(angle))), int(round(c + t * np.cos(angle)))] = 1
    return _filter2d(frames, kernel)


ZOOM_MAX = {1: 1.06, 2: 1.11, 3: 1.16, 4: 1.21, 5: 1.26}


def zoom_blur(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Average of centre zooms from 1× to 1.06–1.26× (ImageNet-C zoom_blur)."""
    _, h, w, _ = frames.shape
    acc = frames.astype(np.float32)
    zooms = np.arange(1.01, ZOOM_MAX[severity], 0.02)
    for z in zooms:
        ys = np.clip(((np.arange(h) - h / 2) / z + h / 2).astype(int), 0, h - 1)
        xs = np.clip(((np.arange(w) - w / 2) / z + w / 2).astype(int), 0, w - 1)
        acc += frames[:, ys][:, :, xs]
    return (acc / (len(zooms) + 1) + 0.5).astype(np.uint8)


FOG_DENSITY = {1: 0.25, 2: 0.35, 3: 0.45, 4: 0.55, 5: 0.65}


def fog(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blend towards a smooth random bright haze (density 0.25–0.65) and lose contrast."""
    _, h, w, _ = frames.shape
    coarse = rng.random((max(2, h // 16), max(2, w // 16)))
    haze = np.kron(coarse, np.ones((16, 16)))[:h, :w]
    haze = _separable_blur(haze[None, :, :, None] * 255, gaussian_kernel(max(1.0, h / 28)))[0, :, :, 0] / 255
    d = FOG_DENSITY[severity] * (0.6 + 0.4 * haze)[None, :, :, None]
    return ((1 - d) * frames + d * 220 + 0.5).clip(0, 255).astype(np.uint8)


BRIGHTNESS = {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4, 5: 0.5}
CONTRAST = {1: 0.4, 2: 0.3, 3: 0.2, 4: 0.1, 5: 0.05}


def brightness(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add 0.1–0.5 of full scale to every pixel (washed-out, over-exposed)."""
    return (frames.astype(np.float32) + 255 * BRIGHTNESS[severity]).clip(0, 255).astype(np.uint8)


def contrast(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Scale deviations from each frame's mean by 0.4 down to 0.05 (ImageNet-C)."""
    x = frames.astype(np.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return ((x - mean) * CONTRAST[severity] + mean + 0.5).clip(0, 255).astype(np.uint8)


PIXELATE = {1: 0.6, 2: 0.5, 3: 0.4, 4: 0.3, 5: 0.25}


def pixelate(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Down-sample to 60–25 % of the size (box filter) and back up (nearest)."""
    from PIL import Image

    _, h, w, _ = frames.shape
    small = (max(1, int(w * PIXELATE[severity])), max(1, int(h * PIXELATE[severity])))
    return np.stack(
        [
            np.asarray(
                Image.fromarray(f)
                .resize(small, Image.Resampling.BOX)
                .resize((w, h), Image.Resampling.NEAREST)
            )
            for f in frames
        ]
    )


JPEG_QUALITY = {1: 25, 2: 18, 3: 15, 4: 10, 5: 7}  # ImageNet-C jpeg_compression


def jpeg(frames: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Re-encode each frame as JPEG at quality 25 down to 7."""
    import io

    from PIL import Image

    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=JPEG_QUALITY[severity])
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def _filter2d(frames: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Normalised 2-D filter via FFT (edges reflected), per frame and channel."""
    kernel = kernel / kernel.sum()
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    pad = ((0, 0), (ph, kh - 1 - ph), (pw, kw - 1 - pw), (0, 0))
    x = np.pad(frames.astype(np.float32), pad, mode="reflect")
    h, w = x.shape[1], x.shape[2]
    spec = np.fft.rfft2(x, axes=(1, 2)) * np.fft.rfft2(kernel, s=(h, w))[None, :, :, None]
    full = np.fft.irfft2(spec, s=(h, w), axes=(1, 2))
    out = full[:, kh - 1 :, kw - 1 :][:, : frames.shape[1], : frames.shape[2]]
    return (out + 0.5).clip(0, 255).astype(np.uint8)


LOWPASS_HZ = {1: 4000, 2: 2000, 3: 1000, 4: 500, 5: 250}


def audio_lowpass(
    wave: np.ndarray, severity: int, rng: np.random.Generator, rate: int = 16_000
) -> np.ndarray:
    """Brick-wall low-pass at 4 kHz down to 250 Hz (a muffled microphone)."""
    spec = np.fft.rfft(wave)
    spec[int(LOWPASS_HZ[severity] * len(wave) / rate) :] = 0
    return np.fft.irfft(spec, n=len(wave)).astype(np.float32)


CLIP_LEVEL = {1: 0.5, 2: 0.3, 3: 0.15, 4: 0.08, 5: 0.04}


def audio_clipping(wave: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Hard clipping at 0.5 down to 0.04 of the clip's peak, renormalised (overdriven input)."""
    peak = max(float(np.abs(wave).max()), 1e-6)
    level = CLIP_LEVEL[severity] * peak
    return (np.clip(wave, -level, level) / level * peak).astype(np.float32)


_ENV_NOISE: dict[str, np.ndarray] = {}
ENV_NOISE_SOURCES = {  # real recordings shipped beside (not inside) the sample set, looped as backgrounds
    "traffic": "avf_car_01_000000.mp4",
    "train": "avf_railroad_01_000000.mp4",
}


def environmental_noise(kind: str) -> np.ndarray:
    """A real background recording (16 kHz mono) from ``sample_data/noise/``: not one
    of the sample clips, so mixing it in does not leak evaluation data."""
    if kind not in _ENV_NOISE:
        from avfusion import sample_data
        from avfusion.config import ClipSpec
        from avfusion.decode import decode_clip

        clip = decode_clip(sample_data.noise_dir() / ENV_NOISE_SOURCES[kind], ClipSpec(frame_size=32))
        _ENV_NOISE[kind] = clip.waveform
    return _ENV_NOISE[kind]


def _mix_environment(kind: str) -> Callable[[np.ndarray, int, np.random.Generator], np.ndarray]:
    def mix(wave: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        noise = environmental_noise(kind)
        start = int(rng.integers(0, len(noise)))
        noise = np.resize(np.roll(noise, -start), wave.shape)
        power = max(float(np.mean(wave**2)), 1e-4)
        scale = np.sqrt(power / 10 ** (AUDIO_SNR_DB[severity] / 10) / max(float(np.mean(noise**2)), 1e-8))
        return np.clip(wave + scale * noise, -1, 1).astype(np.float32)

    mix.__doc__ = f"Real {kind} recording mixed in at SNR 20 … −5 dB."
    return mix


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Corruption:
    name: str
    modality: str  # "audio" or "video"
    fn: Callable[[np.ndarray, int, np.random.Generator], np.ndarray]
    graded: bool  # False: severity has no effect (missing-modality conditions)


CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in [
        Corruption("muted_audio", "audio", mute, False),
        Corruption("audio_gaussian_noise", "audio", audio_gaussian_noise, True),
        Corruption("black_frames", "video", black_frames, False),
        Corruption("frozen_video", "video", frozen_video, False),
        Corruption("drop_frames", "video", drop_frames, True),
        Corruption("gaussian_blur", "video", gaussian_blur, True),
        Corruption("video_gaussian_noise", "video", video_gaussian_noise, True),
        Corruption("shot_noise", "video", shot_noise, True),
        Corruption("impulse_noise", "video", impulse_noise, True),
        Corruption("defocus_blur", "video", defocus_blur, True),
        Corruption("motion_blur", "video", motion_blur, True),
        Corruption("zoom_blur", "video", zoom_blur, True),
        Corruption("fog", "video", fog, True),
        Corruption("brightness", "video", brightness, True),
        Corruption("contrast", "video", contrast, True),
        Corruption("pixelate", "video", pixelate, True),
        Corruption("jpeg", "video", jpeg, True),
        Corruption("audio_lowpass", "audio", audio_lowpass, True),
        Corruption("audio_clipping", "audio", audio_clipping, True),
        Corruption("traffic_noise", "audio", _mix_environment("traffic"), True),
        Corruption("train_noise", "audio", _mix_environment("train"), True),
    ]
}


def apply(name: str, sample: dict, severity: int, rng: np.random.Generator) -> dict:
    """A copy of a decoded sample (``waveform``, ``frames``) with one corruption applied."""
    c = CORRUPTIONS[name]
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1–5, got {severity}")
    key = "waveform" if c.modality == "audio" else "frames"
    return {**sample, key: c.fn(sample[key], severity, rng)}
