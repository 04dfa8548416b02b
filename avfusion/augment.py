"""Training augmentation of whole batches as torch ops on the training device.

The same code runs on the CPU (tests, CPU training) and on a GPU, so what the tests
prove about it holds for the GPU path. It reproduces, in distribution, a per-clip
numpy reference (``jobs/bench/reference_augment.py``, which the tests compare it with):
temporal crops, waveform shift and gain, one random resized crop per clip (all its
frames), flip, colour jitter, modality dropout (mute or noise the audio; black,
blurred, noisy or frozen frames, with ``avfusion.corruptions``' parameters) and light
frame dropping, then mixup. Labels are untouched; mixup returns soft targets beside
them.

Randomness, split in two so that nothing waits on the device:
* per-clip *decisions* (which clip is cropped where, flipped, dropped, its severity,
  mixup's weight and permutation) are a few numbers per clip, drawn on the host from
  ``numpy.random.default_rng`` seeded by (seed, rank, worker, epoch, step). Knowing
  them on the host means only the clips that are blurred get blurred, with no
  ``nonzero`` or ``.item()`` (a host sync on CUDA);
* per-*pixel* and per-sample noise is drawn on the device from a ``torch.Generator``
  seeded from the same tuple.
So a batch's augmentation depends only on that tuple, not on batching history: a
resumed run augments its steps as the uninterrupted one did, and ranks and loader
workers differ.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike

from avfusion.config import bounded, check_bounds
from avfusion.corruptions import AUDIO_SNR_DB, BLUR_SIGMA, VIDEO_NOISE_STD, gaussian_kernel
from avfusion.device import to_device
from avfusion.loader import Batch, seed_of


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation, run batched on the training device by ``BatchAugment``.

    Two kinds, both keep the label: *content* augmentation (waveform shift and gain,
    random resized crop, flip and colour jitter of the frames) so few real clips go
    further, and *modality dropout* (one modality muted, blacked out or degraded) so
    attention sees what an uninformative modality looks like. Probabilities are per
    sample; at most one modality is dropped, so a label stays recoverable."""

    enabled: bool = True
    p_audio: float = bounded(0.25, ge=0, le=1)  # corrupt audio: mute (half of the time) or noise
    p_video: float = bounded(0.25, ge=0, le=1)  # corrupt video: black, frozen, blurred or noisy
    p_drop_frames: float = bounded(0.1, ge=0, le=1)  # independent light frame dropping (temporal jitter)
    content: bool = False  # waveform shift/gain and frame crop/flip/jitter below
    shift: bool = True  # circular shift of the waveform by a uniform random offset
    gain_db: float = bounded(6.0, ge=0, le=60)  # uniform random gain in ±gain_db
    crop_scale: float = bounded(0.5, gt=0, le=1)  # random resized crop keeps 50–100 % of the frame area
    flip: bool = True  # horizontal flip with probability 0.5
    color_jitter: float = bounded(0.3, ge=0, le=1)  # brightness, contrast, saturation factors in 1 ± this
    crop_seconds: float = bounded(0.0, ge=0, le=3600)  # train on a random window this long (0 = whole clip)
    crop_frames: int = bounded(0, ge=0, le=512)  # train on this many of the clip's frames, in order (0 = all)
    # Audio noise at the top severity (-5 dB SNR) counts as dead for the dead-modality term:
    # the audio-only model keeps 0.01-0.06 of its evidence there on the bundled set. On in
    # `small`; it teaches that noise only, not a held-out destroyed stream (docs/model.md).
    dead_noise: bool = False

    def __post_init__(self) -> None:
        check_bounds(self, "train.augment")


# Modality dropout's draws (``avfusion.corruptions`` names), severity 3–5.
AUDIO_TRAIN = ("muted_audio", "muted_audio", "audio_gaussian_noise")
# Dead streams (mute; black or frozen frames) weigh most: they are what attention must
# learn to route around; blur and noise at these severities often leave the picture usable.
VIDEO_TRAIN = (
    "black_frames",
    "black_frames",
    "frozen_video",
    "frozen_video",
    "gaussian_blur",
    "video_gaussian_noise",
)
_DROP = {1: 1, 2: 2}  # drop_frames at the severities training uses (of 8 frames, scaled)


class BatchAugment:
    """``__call__(batch, device, epoch, step)`` → (decoded augmented batch on
    ``device``, (B, C) soft targets). The compact batch is decoded on ``device`` here,
    after the temporal crop chose which frames to decode."""

    def __init__(
        self,
        cfg: AugmentConfig,
        *,
        num_classes: int,
        seed: int = 0,
        rank: int = 0,
        sample_rate: int = 16_000,
        mixup_alpha: float = 0.0,
        mixup_prob: float = 0.5,
    ):
        self.cfg, self.num_classes, self.seed, self.rank = cfg, num_classes, seed, rank
        self.sample_rate, self.mixup_alpha, self.mixup_prob = sample_rate, mixup_alpha, mixup_prob

    def __call__(
        self, batch: Batch, device: torch.device | str, epoch: int, step: int
    ) -> tuple[Batch, torch.Tensor]:
        device = torch.device(device)
        s = seed_of(self.seed, self.rank, batch.worker, epoch, step)
        rng = np.random.default_rng(s)
        gen = _generator(device, s)
        cfg = self.cfg
        b, t = len(batch.keys), batch.n_frames
        index = None
        if cfg.enabled and 0 < cfg.crop_frames < t:
            index = torch.from_numpy(
                np.sort(rng.random((b, t)).argsort(axis=1)[:, : cfg.crop_frames], axis=1)
            )
        batch = batch.to(device, frame_index=index)
        assert batch.frames is not None  # ``to`` decodes the frames
        wave, x = batch.waveform, batch.frames.permute(0, 1, 4, 2, 3).float()  # (B, T, 3, H, W)
        if cfg.enabled:
            wave = _crop_wave(wave, rng, int(cfg.crop_seconds * self.sample_rate))
            if cfg.content:
                wave = shift_and_gain(wave, rng, cfg.shift, cfg.gain_db)
                x = resized_crop_and_flip(x, rng, cfg.crop_scale, cfg.flip)
                if cfg.color_jitter > 0:
                    x = color_jitter(x, rng, cfg.color_jitter)
            wave, x, dead, blank = modality_dropout(
                wave, x, rng, gen, cfg.p_audio, cfg.p_video, dead_noise=cfg.dead_noise
            )
            x = drop_frames(x, rng, cfg.p_drop_frames)
        else:
            dead = blank = torch.zeros(b, 2, dtype=torch.bool, device=device)
        soft = _one_hot(batch.target, self.num_classes)
        lam, perm = _mix_draw(rng, b, self.mixup_alpha, self.mixup_prob, device)
        if perm is not None:  # blended before the one rounding to uint8
            wave, x = lam * wave + (1 - lam) * wave[perm], x.mul_(lam).add_(x[perm], alpha=1 - lam)
            soft = lam * soft + (1 - lam) * soft[perm]
            dead = dead & dead[perm]  # a muted clip mixed with a live one hears the other clip
            blank = blank & blank[perm]
        out = Batch(wave, _to_uint8(x), batch.target, batch.keys, worker=batch.worker, dead=dead, blank=blank)
        return out, soft


def _one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, C) float one-hot. ``F.one_hot`` reads the targets' min and max on the host
    (a device sync) except on CUDA; a scatter reads nothing."""
    return torch.zeros(len(target), num_classes, device=target.device).scatter_(1, target[:, None], 1.0)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) float → (B, T, H, W, 3) uint8 as the model takes it (a view)."""
    return (x + 0.5).clamp_(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2)


def _host(values: ArrayLike, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Host-drawn decisions on the device, copied without waiting for it."""
    return to_device(torch.as_tensor(np.asarray(values), dtype=dtype), device)


def _generator(device: torch.device, seed: int) -> torch.Generator:
    """The device's generator; the meta device has none (its draws have no values), so
    a CPU one stands in there."""
    gen = torch.Generator(device=device) if device.type in ("cpu", "cuda") else torch.Generator()
    gen.manual_seed(seed)
    return gen


def _crop_wave(wave: torch.Tensor, rng: np.random.Generator, n: int) -> torch.Tensor:
    """A random window of ``n`` samples per clip (the reference's temporal crop)."""
    if not 0 < n < wave.shape[1]:
        return wave
    start = _host(rng.integers(0, wave.shape[1] - n + 1, size=len(wave)), wave.device, torch.int64)
    return wave.gather(1, start[:, None] + torch.arange(n, device=wave.device))


def shift_and_gain(wave: torch.Tensor, rng: np.random.Generator, shift: bool, gain_db: float) -> torch.Tensor:
    """Per clip: circular shift by a uniform offset (``np.roll``), gain uniform in ±gain_db."""
    b, n = wave.shape
    if shift:
        offset = _host(rng.integers(0, n, size=b), wave.device, torch.int64)
        wave = wave.gather(1, (torch.arange(n, device=wave.device) - offset[:, None]) % n)
    if gain_db > 0:
        wave = wave * _host(10 ** (rng.uniform(-gain_db, gain_db, size=b) / 20), wave.device)[:, None]
    return wave.clamp(-1, 1)


def crop_boxes(rng: np.random.Generator, b: int, h: int, w: int, min_scale: float) -> np.ndarray:
    """(B, 4) boxes x0, y0, cw, ch: area min_scale–100 %, aspect 3/4–4/3, as the reference."""
    area = h * w * rng.uniform(min_scale, 1.0, size=b)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), size=b))
    cw = np.minimum(w, np.maximum(8, np.round(np.sqrt(area * aspect)))).astype(np.int64)
    ch = np.minimum(h, np.maximum(8, np.round(np.sqrt(area / aspect)))).astype(np.int64)
    y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return np.stack([x0, y0, cw, ch], axis=1)


def resized_crop_and_flip(
    x: torch.Tensor, rng: np.random.Generator, min_scale: float, flip: bool
) -> torch.Tensor:
    """One crop box per clip, resized back to H×W (bilinear, the half-pixel arithmetic
    and edge clamping of ``interpolate(align_corners=False)`` on the crop, as the
    reference), mirrored with p = 0.5. Separable: rows then columns, each two gathers
    and a lerp (an axis-aligned crop needs no 2-D ``grid_sample``)."""
    b, t, c, h, w = x.shape
    do_crop = min_scale < 1
    boxes = crop_boxes(rng, b, h, w, min_scale) if do_crop else np.tile([0, 0, w, h], (b, 1))
    mirror = rng.random(b) < 0.5 if flip else np.zeros(b, bool)
    if not do_crop and not mirror.any():
        return x
    x0, y0, cw, ch = boxes.T
    rows = _lerp_index(y0, ch, h, np.zeros(b, bool))
    cols = _lerp_index(x0, cw, w, mirror)
    dtypes = (torch.int64, torch.int64, torch.float32)
    x = _resample(x, 3, *(_host(v, x.device, d) for v, d in zip(rows, dtypes, strict=True)))
    return _resample(x, 4, *(_host(v, x.device, d) for v, d in zip(cols, dtypes, strict=True)))


def _lerp_index(
    start: np.ndarray, size: np.ndarray, n: int, mirror: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, n) source indices i0, i1 and weights of output pixels 0..n-1 of each crop."""
    j = np.arange(n)[None, :]
    j = np.where(mirror[:, None], n - 1 - j, j)
    src = np.clip((j + 0.5) * size[:, None] / n - 0.5, 0, size[:, None] - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, size[:, None] - 1)
    return i0 + start[:, None], i1 + start[:, None], (src - i0).astype(np.float32)


def _resample(
    x: torch.Tensor, dim: int, i0: torch.Tensor, i1: torch.Tensor, frac: torch.Tensor
) -> torch.Tensor:
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = x.shape[dim]
    out_shape = list(x.shape)
    expand = lambda v: v.view(shape).expand(out_shape)  # noqa: E731
    a = x.gather(dim, expand(i0))
    return a.lerp_(x.gather(dim, expand(i1)), expand(frac))


def color_jitter(x: torch.Tensor, rng: np.random.Generator, strength: float) -> torch.Tensor:
    """Per clip: brightness, contrast (about the clip's mean) and saturation (about each
    pixel's grey), each factor uniform in 1 ± strength, as the reference composes them.
    The three are affine, so they fold into ``a*x + b*grey + c`` (grey: the channel
    mean): one pass over the frames instead of six (on a CPU this op is memory-bound)."""
    f = rng.uniform(1 - strength, 1 + strength, size=(len(x), 3))
    bright, cont, sat = (_host(f[:, i], x.device).view(-1, 1, 1, 1, 1) for i in range(3))
    grey = x.mean(dim=2, keepdim=True)  # (B, T, 1, H, W)
    mean = grey.mean(dim=(1, 3, 4), keepdim=True) * bright  # the clip's mean after brightness
    alpha = bright * cont  # y = alpha * x + beta after brightness and contrast
    beta = mean * (1 - cont)
    out = torch.addcmul(grey * (alpha * (1 - sat)) + beta, x, alpha * sat)
    return out.clamp_(0, 255)


_Picks = dict[tuple[str, int], list[int]]  # (name, severity) → clip indices


def _pick(rng: np.random.Generator, b: int, p_audio: float, p_video: float) -> tuple[_Picks, _Picks]:
    """Which clips get which dropout, at which severity: {(name, severity): clip indices}.
    At most one modality per clip (one uniform draw), as the reference."""
    u = rng.random(b)
    audio: _Picks = {}
    video: _Picks = {}
    for i in range(b):
        if u[i] < p_audio:
            pick = (AUDIO_TRAIN[rng.integers(len(AUDIO_TRAIN))], int(rng.integers(3, 6)))
            audio.setdefault(pick, []).append(i)
        elif u[i] < p_audio + p_video:
            pick = (VIDEO_TRAIN[rng.integers(len(VIDEO_TRAIN))], int(rng.integers(3, 6)))
            video.setdefault(pick, []).append(i)
    return audio, video


DEAD = {"muted_audio": 0, "black_frames": 1, "frozen_video": 1}  # ops that leave a stream no evidence
# ... and of those, the ones that leave it no signal at all: a frozen stream still shows a
# live picture (a still photograph is all some classes need)
BLANK = ("muted_audio", "black_frames")
DEAD_NOISE = ("audio_gaussian_noise", 5)  # dead too under ``dead_noise``: no evidence left, a live signal


def modality_dropout(
    wave: torch.Tensor,
    x: torch.Tensor,
    rng: np.random.Generator,
    gen: torch.Generator,
    p_audio: float,
    p_video: float,
    *,
    dead_noise: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mute or noise the audio of some clips, black / blur / noise / freeze the frames
    of others; each op touches only its clips (indices known on the host). Also returns
    (B, 2) bool [audio, video]: the streams left dead (muted; black or frozen; noise and
    blur degrade a stream but leave it evidence), which the dead-modality loss reads, and
    of those the blank ones (muted; black). With ``dead_noise`` the audio noise of
    ``DEAD_NOISE``'s severity is dead too (not blank: its head still hears noise)."""
    audio, video = _pick(rng, len(wave), p_audio, p_video)
    dead = np.zeros((len(wave), 2), bool)
    blank = np.zeros((len(wave), 2), bool)
    for (name, severity), clips in (*audio.items(), *video.items()):
        if name in DEAD:
            dead[clips, DEAD[name]] = True
            blank[clips, DEAD[name]] = name in BLANK
        elif dead_noise and (name, severity) == DEAD_NOISE:
            dead[clips, 0] = True
    wave = wave.clone()  # ``x`` is already this call's own (made by the float conversion or crop)
    for (name, severity), clips in sorted(audio.items()):
        idx = _host(clips, wave.device, torch.int64)
        sel = wave[idx]
        if name == "muted_audio":
            sel = torch.zeros_like(sel)
        else:  # audio_gaussian_noise at the clip's own power
            power = sel.pow(2).mean(dim=1, keepdim=True).clamp_min(1e-4)
            std = (power / 10 ** (AUDIO_SNR_DB[severity] / 10)).sqrt()
            sel = (sel + std * torch.randn(sel.shape, generator=gen, device=sel.device)).clamp(-1, 1)
        wave[idx] = sel
    for (name, severity), clips in sorted(video.items()):
        idx = _host(clips, x.device, torch.int64)
        x[idx] = _video_op(name, severity, x[idx], gen)
    return wave, x, _host(dead, wave.device, torch.bool), _host(blank, wave.device, torch.bool)


def _video_op(name: str, severity: int, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if name == "black_frames":
        return torch.zeros_like(x)
    if name == "frozen_video":
        return x[:, :1].expand_as(x)
    if name == "gaussian_blur":
        return gaussian_blur(x, BLUR_SIGMA[severity] * x.shape[-2] / 224)
    if name == "video_gaussian_noise":
        noise = torch.randn(x.shape, generator=gen, device=x.device) * (VIDEO_NOISE_STD[severity] * 255)
        return (x + noise).clamp(0, 255)
    raise ValueError(f"no batched version of {name}")


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (..., H, W) with the reference's kernel and reflected
    edges, as two matrix products ``Kh @ x @ Kw^T`` (the reflection folded into the
    banded matrices): matmuls run at full speed on CPU and GPU, a 37-tap 1-channel
    conv2d does not."""
    h, w = x.shape[-2:]
    kh, kw = (_blur_matrix(n, sigma, x.device) for n in (h, w))
    return kh @ x @ kw.T


@functools.lru_cache(maxsize=32)
def _blur_matrix(n: int, sigma: float, device: torch.device) -> torch.Tensor:
    """(n, n): row i = the kernel centred on i, taps past an edge reflected back
    (``np.pad(mode="reflect")``; edge-replicated when the kernel is wider than n).
    Built once per (size, sigma, device) and kept there: training blurs a few sizes at
    three severities, so a step never rebuilds one or copies it to the device."""
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    rows = np.arange(n)[:, None]
    src = rows + np.arange(len(k))[None, :] - r
    if n > r:
        src = np.where(src < 0, -src, np.where(src >= n, 2 * (n - 1) - src, src))
    m = np.zeros((n, n), np.float32)
    np.add.at(m, (np.broadcast_to(rows, src.shape), np.clip(src, 0, n - 1)), np.broadcast_to(k, src.shape))
    return to_device(torch.from_numpy(m), device)


def drop_frames(x: torch.Tensor, rng: np.random.Generator, p: float) -> torch.Tensor:
    """With probability ``p`` per clip, drop 1 or 2 of 8 frames (scaled to T), each
    replaced by its nearest kept frame (the reference's ``drop_frames``)."""
    b, t = x.shape[:2]
    chosen = rng.random(b) < p
    if t < 2 or not chosen.any():
        return x
    index = np.tile(np.arange(t), (b, 1))
    for i in np.flatnonzero(chosen):
        n_drop = min(t - 1, round(_DROP[int(rng.integers(1, 3))] * t / 8))
        keep = np.sort(rng.choice(t, size=t - n_drop, replace=False))
        index[i] = keep[np.abs(np.arange(t)[:, None] - keep[None, :]).argmin(axis=1)]
    idx = _host(index, x.device, torch.int64)
    return x[torch.arange(b, device=x.device)[:, None], idx]


def _mix_draw(
    rng: np.random.Generator, b: int, alpha: float, prob: float, device: torch.device | str
) -> tuple[float, torch.Tensor | None]:
    """Mixup's draws: (lam >= 0.5, permutation) for this batch, or (1, None) unmixed."""
    if alpha <= 0 or rng.random() >= prob:
        return 1.0, None
    lam = float(rng.beta(alpha, alpha))
    return max(lam, 1 - lam), _host(rng.permutation(b), device, torch.int64)


def mixup(
    batch: Batch, num_classes: int, alpha: float, prob: float, rng: np.random.Generator | None = None
) -> tuple[Batch, torch.Tensor]:
    """Mix each clip with another of the batch (a random permutation): waveform,
    frames and one-hot labels with one weight lam ~ Beta(alpha, alpha) per batch,
    folded to lam >= 0.5 so the first clip stays dominant. Returns the batch and its
    (B, C) soft targets; the hard ``target`` stays the dominant clip's label.
    (``BatchAugment`` draws the same way and blends its float frames instead.)"""
    soft = _one_hot(batch.target, num_classes)
    lam, perm = _mix_draw(
        rng if rng is not None else np.random.default_rng(), len(batch.keys), alpha, prob, batch.target.device
    )
    if perm is None:
        return batch, soft
    wave = lam * batch.waveform + (1 - lam) * batch.waveform[perm]
    assert batch.frames is not None  # mixup takes a decoded batch
    frames = (lam * batch.frames.float() + (1 - lam) * batch.frames[perm].float()).round().to(torch.uint8)
    mixed = Batch(wave, frames, batch.target, batch.keys, worker=batch.worker)
    return mixed, lam * soft + (1 - lam) * soft[perm]
