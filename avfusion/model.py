"""The late-fusion model: waveform CNN + per-frame ResNet-18, fused by modality attention.

No distributed code here (the training loop wraps the model); every module declares
its input and output sizes. ``forward_features`` returns the per-modality embeddings,
``forward_head`` the logits and the attention weights, so evaluation and labelling
can report what each modality contributes.

    [w_audio, w_video] = softmax([Wa·a, Wv·v]);  fused = w_audio·a + w_video·v

Two choices make a dead stream cost little (docs/model.md "Ablation" ablates both):
the scores may also read a few *evidence* features of each input (is there sound, is
there a picture, does it move), and with ``shared_head`` one linear classifier serves
the fused embedding and each modality's own, so ``logits = w_a·head(a) + w_v·head(v)``:
a weight near 0 leaves exactly what the other modality's head says.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from avfusion import pretrained, storage
from avfusion.config import ConfigError, bounded, check_bounds

log = logging.getLogger(__name__)

MODALITIES = ("both", "audio", "video")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """What a model is. ``num_classes``, ``sample_rate`` and ``aux_heads`` come from the
    data and the loss, not from a recipe: training fills them in (``train.build_model``)."""

    # None: not known yet (a recipe's model section)
    num_classes: int | None = bounded(None, ge=1, le=1_000_000)
    modalities: str = "both"  # both | audio | video (unimodal baselines share the encoders)
    embed_dim: int = bounded(256, ge=1, le=65_536)  # shared size after projection, what attention mixes
    audio_width: int = bounded(64, ge=1, le=4096)  # audio body channels: 2×, 2×, 4×, 4× this per block
    audio_frontend: str = "gabor"  # gabor (mel-initialised learnable filterbank) | conv (free strided conv)
    audio_filters: int = bounded(64, ge=1, le=4096)  # filterbank channels
    spec_augment: bool = True  # time/frequency masks on the filterbank output while training
    sample_rate: int = bounded(16_000, ge=1_000, le=192_000)
    video_weights: str = "none"  # imagenet | none | path to a ResNet-18 state dict
    dropout: float = bounded(0.2, ge=0, le=1)
    aux_heads: bool = True  # the unimodal auxiliary heads; built only where a loss trains them (DDP)
    shared_head: bool = True  # the aux heads are the fused classifier itself: fused logits = Σ w_m · head(m)
    evidence: bool = True  # the attention scores also read each encoder's signal-present features
    # the attention scores also read each own head's detached confidence (its log-sum-exp
    # and top log-probability): a fused model with aux heads only (docs/model.md)
    confidence: bool = False
    # the mix the fused classifier reads is of detached embeddings: the fused loss trains
    # the classifier and the attention, and reaches an encoder only through its score;
    # each branch learns its classes from its own head's loss, as a unimodal model does
    # (no modality competition). The scores keep training the encoders: detached there
    # too, a muted track kept 0.63 of the weight (docs/model.md)
    isolate_branches: bool = False

    def __post_init__(self) -> None:
        check_bounds(self, "train.model")
        if self.modalities not in MODALITIES:
            raise ConfigError(
                f"train.model.modalities: {self.modalities!r} is not allowed; allowed: one of {MODALITIES}"
            )
        if self.audio_frontend not in AUDIO_FRONTENDS:
            raise ConfigError(
                f"train.model.audio_frontend: {self.audio_frontend!r} is not allowed; "
                f"allowed: one of {AUDIO_FRONTENDS}"
            )


AUDIO_FRONTENDS = ("gabor", "conv")


def mel_to_hz(mel: float) -> float:
    """HTK mel scale (as torchaudio/librosa with htk=True)."""
    return 700.0 * (10 ** (mel / 2595.0) - 1.0)


def hz_to_mel(hz: float) -> float:
    return 2595.0 * math.log10(1.0 + hz / 700.0)


def mel_filter_params(
    n_filters: int, sample_rate: int, f_min: float, f_max: float
) -> tuple[list[float], list[float]]:
    """Centre frequencies and full widths at half maximum (Hz) of a triangular mel
    filterbank: ``n_filters`` centres equally spaced on the mel scale between
    ``f_min`` and ``f_max``; each triangle spans its neighbours' centres, so its FWHM
    is half the distance between them."""
    lo, hi = hz_to_mel(f_min), hz_to_mel(min(f_max, sample_rate / 2))
    edges = [mel_to_hz(lo + (hi - lo) * i / (n_filters + 1)) for i in range(n_filters + 2)]
    centres = edges[1:-1]
    fwhm = [(edges[i + 2] - edges[i]) / 2 for i in range(n_filters)]
    return centres, fwhm


class GaborFilterbank(nn.Module):
    """Learnable complex Gabor filterbank on the raw waveform, initialised on the mel
    scale (the LEAF / TD-filterbank family): filter k is a Gaussian window of width
    ``sigma_k`` samples times ``exp(i·eta_k·t)``; its squared modulus is a band energy.

    Why this front end: a free strided convolution must discover frequency selectivity
    from data, which few real clips do not teach (an audio-only model stayed at chance).
    Gabor filters start as a mel spectrogram, so the body learns from the first step,
    and have two parameters each (centre, bandwidth), so they cannot overfit. Sampling
    the complex response every ``hop`` samples (not at every sample, then pooling as
    LEAF does) keeps the cost that of one strided convolution on a 2-core CPU.

    (B, N) waveform → (B, n_filters, N // hop + 1) band powers.
    """

    t: torch.Tensor  # kernel tap offsets (samples), a buffer

    def __init__(
        self,
        n_filters: int = 64,
        sample_rate: int = 16_000,
        window: int = 801,
        hop: int = 160,
        f_min: float = 60.0,
        f_max: float = 7_800.0,
    ):
        super().__init__()
        self.n_filters, self.sample_rate, self.window, self.hop = n_filters, sample_rate, window | 1, hop
        centres, fwhm = mel_filter_params(n_filters, sample_rate, f_min, f_max)
        # A Gaussian window of std sigma (samples) has a frequency response of FWHM
        # 2·sqrt(2 ln 2)/sigma rad/sample = sqrt(2 ln 2)·sr/(pi·sigma) Hz.
        sigma = torch.tensor([math.sqrt(2 * math.log(2)) * sample_rate / (math.pi * f) for f in fwhm])
        self.sigma_range = (2.0, self.window / 6)  # keeps each window inside the kernel
        self.eta = nn.Parameter(torch.tensor([2 * math.pi * f / sample_rate for f in centres]))  # rad/sample
        self.sigma = nn.Parameter(sigma.clamp(*self.sigma_range))
        self.register_buffer(
            "t", torch.arange(self.window, dtype=torch.float32) - self.window // 2, persistent=False
        )

    def kernels(self) -> torch.Tensor:
        """(2·n_filters, 1, window): real parts, then imaginary parts; unit DC gain windows."""
        eta = self.eta.clamp(0.0, math.pi)
        sigma = self.sigma.clamp(*self.sigma_range)
        window = torch.exp(-0.5 * (self.t[None, :] / sigma[:, None]) ** 2)
        window = window / window.sum(dim=1, keepdim=True)
        phase = eta[:, None] * self.t[None, :]
        return torch.cat([window * torch.cos(phase), window * torch.sin(phase)]).unsqueeze(1)

    def centre_hz(self) -> torch.Tensor:
        return self.eta.detach().clamp(0.0, math.pi) * self.sample_rate / (2 * math.pi)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = F.conv1d(waveform.unsqueeze(1), self.kernels(), stride=self.hop, padding=self.window // 2)
        return x[:, : self.n_filters] ** 2 + x[:, self.n_filters :] ** 2


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager[object]:
    """Autocast off for this device (a no-op context where autocast does not exist: meta)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _no_tf32(device_type: str) -> Iterator[None]:
    """cuDNN convolutions in full fp32 on CUDA: they run in TF32 (10 mantissa bits) by
    default on Ampere and later, whatever the tensors' dtype says. torch >= 2.9 has a
    per-backend flag and refuses a mix of it with the legacy one."""
    if device_type != "cuda":
        yield
        return
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        saved = conv.fp32_precision
        conv.fp32_precision = "ieee"
        try:
            yield
        finally:
            conv.fp32_precision = saved
        return
    legacy = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = legacy


class ConvFrontEnd(nn.Module):
    """The original front end, kept for the ablation: a free strided convolution
    (25 ms windows, 10 ms hop at 16 kHz) + BatchNorm + ReLU, learned from scratch.
    (B, N) → (B, n_filters, frames)."""

    def __init__(self, n_filters: int = 64, hop: int = 160):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv1d(1, n_filters, kernel_size=400, stride=hop, padding=200, bias=False),
            nn.BatchNorm1d(n_filters),
            nn.ReLU(inplace=True),
        )

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.layers(waveform.unsqueeze(1))


class SpecMask(nn.Module):
    """SpecAugment-style masking on the filterbank output, in training only: up to
    ``time_masks`` spans of at most ``max_time`` of the frames and ``freq_masks``
    bands of at most ``max_freq`` of the filters are set to the (normalised) mean, 0.
    Draws from torch's RNG of the input's device (the CPU's or the GPU's; checkpoints
    carry both), so the masks are made where the data is and resumed runs repeat them."""

    def __init__(
        self, time_masks: int = 2, max_time: float = 0.1, freq_masks: int = 2, max_freq: float = 0.15
    ):
        super().__init__()
        self.time_masks, self.max_time, self.freq_masks, self.max_freq = (
            time_masks,
            max_time,
            freq_masks,
            max_freq,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        b, f, t = x.shape
        keep = torch.ones(b, f, t, dtype=torch.bool, device=x.device)
        for n, size, axis in (
            (self.time_masks, int(self.max_time * t), 2),
            (self.freq_masks, int(self.max_freq * f), 1),
        ):
            length = x.shape[axis]
            for _ in range(n):
                width = torch.randint(0, max(size, 1) + 1, (b,), device=x.device)
                start = (torch.rand(b, device=x.device) * (length - width + 1).float()).long()
                idx = torch.arange(length, device=x.device)
                band = (idx[None] >= start[:, None]) & (idx[None] < (start + width)[:, None])
                keep &= ~(band[:, :, None] if axis == 1 else band[:, None, :])
        return x * keep


class AudioEncoder(nn.Module):
    """1-D CNN on the raw waveform.

    front end (Gabor filterbank → log compression, or the free strided conv) →
    per-channel BatchNorm → SpecMask (training) → four 1-D conv blocks over time
    (each halves the frame rate) → mean + max pooling over time.

    (B, N) float waveform in [-1, 1] → (B, out_dim), out_dim = 2 · 4 · width.
    """

    def __init__(
        self,
        width: int = 64,
        frontend: str = "gabor",
        n_filters: int = 64,
        sample_rate: int = 16_000,
        spec_augment: bool = True,
    ):
        super().__init__()
        if frontend not in AUDIO_FRONTENDS:
            raise ValueError(f"audio frontend must be one of {AUDIO_FRONTENDS}, got {frontend!r}")
        self.frontend_name = frontend
        self.frontend = (
            GaborFilterbank(n_filters, sample_rate) if frontend == "gabor" else ConvFrontEnd(n_filters)
        )
        self.norm = nn.BatchNorm1d(n_filters)  # per filter: log energies differ by tens of dB across bands
        self.mask = SpecMask() if spec_augment else nn.Identity()
        layers: list[nn.Module] = []
        channels = n_filters
        for out in (width * 2, width * 2, width * 4, width * 4):
            layers += [
                nn.Conv1d(channels, out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm1d(out),
                nn.ReLU(inplace=True),
                nn.Conv1d(out, out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm1d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool1d(2),
            ]
            channels = out
        self.body = nn.Sequential(*layers)
        self.out_dim = channels * 2

    def features(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, N) → (B, n_filters, frames): normalised log band energies (gabor) or the
        conv front end's activations. Always fp32, also under autocast and with TF32
        off: the 801-tap filters' squared responses span tens of dB and their log in
        bf16 was off by up to ~1.9 nats in the top bands."""
        with _no_autocast(waveform.device.type), _no_tf32(waveform.device.type):
            x = self.frontend(waveform.float())
            if self.frontend_name == "gabor":
                x = torch.log(x + 1e-8)  # -184 dB floor: silence is a constant, not -inf
            return self.norm(x)

    evidence_dim = 2

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = self.body(self.mask(self.features(waveform)))
        return torch.cat([x.mean(dim=-1), x.amax(dim=-1)], dim=1)

    @staticmethod
    def evidence(waveform: torch.Tensor, hop: int = 160) -> torch.Tensor:
        """(B, N) → (B, 2) detached: mean and spread over 10 ms frames of the frame
        energy, in nats. A muted track sits at the floor (-18.4) with no spread,
        whatever the encoder learned; what the attention score reads besides ``a``.
        Unscaled on purpose: a live clip is ~10 nats above the floor, so the score can
        learn to separate them within a few hundred steps of a small learning rate."""
        with torch.no_grad(), _no_autocast(waveform.device.type):
            n = waveform.shape[1] // hop * hop
            energy = torch.log(waveform[:, :n].float().view(len(waveform), -1, hop).pow(2).mean(dim=2) + 1e-8)
            return torch.stack([energy.mean(dim=1), energy.std(dim=1, unbiased=False)], dim=1)


def _resnet18(
    weights: str, *, load: bool = True, imagenet_url: str | None = None
) -> tuple[nn.Module, pretrained.VideoInit]:
    """ResNet-18 with its starting weights, and where they came from. ``load`` False:
    random weights, nothing read (a DDP rank, whose weights rank 0's replace, or a run
    that resumes from its checkpoint). ``imagenet_url``: see ``pretrained.fetch_imagenet``."""
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if weights == "none":
        return net, pretrained.VideoInit(requested=weights, loaded=pretrained.RANDOM)
    if not load:
        return net, pretrained.VideoInit(requested=weights, loaded=pretrained.NOT_READ)
    if weights == "imagenet":
        state, init = pretrained.fetch_imagenet(imagenet_url)
        if state is None:
            url = init.source or ""
            warnings.warn(
                f"ImageNet weights for ResNet-18 unavailable ({init.reason}: {url}): the video encoder "
                f"starts from RANDOM weights, and the checkpoint records that. Copy torchvision's "
                f"{url.rsplit('/', 1)[-1]} to {pretrained.cache_file(url)} or pass --video-weights PATH.",
                stacklevel=3,
            )
            return net, init
        path = pretrained.cache_file(url=init.source or "")
    else:
        path = weights  # a local path or a URL (s3://…)
        if not storage.exists(path):
            raise FileNotFoundError(f"video weights file {path} does not exist")
        state = storage.load_torch(path)
        init = pretrained.VideoInit(
            requested=weights, loaded=pretrained.FILE, source=path, sha256=storage.sha256(path)
        )
    missing, unexpected = net.load_state_dict(state, strict=False)
    if [k for k in missing if not k.startswith("fc.")] or unexpected:
        raise ValueError(
            f"{path} is not a ResNet-18 state dict (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    log.info("loaded ResNet-18 weights from %s (sha256 %s)", path, init.sha256)
    return net, init


class VideoEncoder(nn.Module):
    """ResNet-18 per frame, temporal average pooling over the frames. Takes uint8
    frames and normalises inside, so loaders ship bytes-sized tensors."""

    out_dim = 512
    init: pretrained.VideoInit  # where the starting weights came from
    mean: torch.Tensor  # ImageNet channel means and stds in uint8 units, buffers
    std: torch.Tensor

    def __init__(self, weights: str = "none", *, load: bool = True, imagenet_url: str | None = None):
        super().__init__()
        net, self.init = _resnet18(weights, load=load, imagenet_url=imagenet_url)
        net.fc = nn.Identity()
        self.backbone = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    evidence_dim = 2

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, 3) uint8 → (B, 512)."""
        return self.forward_frames(frames).mean(dim=1)

    def forward_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, 3) uint8 → (B, T, 512) per-frame features, before pooling."""
        b, t = frames.shape[:2]
        x = frames.reshape(b * t, *frames.shape[2:]).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        if x.is_cuda:  # channels_last speeds up cuDNN convolutions; on CPU it only costs copies
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x).view(b, t, -1)

    @staticmethod
    def evidence(frames: torch.Tensor, per_frame: torch.Tensor) -> torch.Tensor:
        """(B, 2) detached, in nats: the pixels' spread within a frame (a floor of -9.2
        for a black or flat picture) and the per-frame features' spread over time
        relative to their size (the floor for a frozen stream or a single picture).
        Pooling over time hides both: a frozen clip's pooled features are those of one
        live frame."""
        with torch.no_grad(), _no_autocast(frames.device.type):
            pixels = frames.float().flatten(2).std(dim=2, unbiased=False).mean(dim=1) / 64
            f = per_frame.float()
            motion = f.std(dim=1, unbiased=False).mean(dim=1) / (f.abs().mean(dim=(1, 2)) + 1e-6)
            return torch.stack([torch.log(pixels + 1e-4), torch.log(motion + 1e-4)], dim=1)


class ModalityAttention(nn.Module):
    """Projects both embeddings to ``dim`` and weighs them with a softmax over one
    learned score each: ``[w_a, w_v] = softmax([Wa·a, Wv·v])``.

    A unimodal model passes None for the branch it lacks: it gets that branch's
    projection only and no score layers, so every parameter it owns gets a gradient
    (DDP requires it) and no weights are dead."""

    def __init__(
        self,
        audio_dim: int | None,
        video_dim: int | None,
        dim: int,
        audio_evidence: int = 0,
        video_evidence: int = 0,
    ):
        super().__init__()

        def proj(d: int | None) -> nn.Sequential | None:
            return nn.Sequential(nn.Linear(d, dim), nn.LayerNorm(dim), nn.ReLU(inplace=True)) if d else None

        self.audio_proj, self.video_proj = proj(audio_dim), proj(video_dim)
        both = bool(audio_dim and video_dim)
        self.audio_score = nn.Linear(dim + audio_evidence, 1) if both else None  # Wa
        self.video_score = nn.Linear(dim + video_evidence, 1) if both else None  # Wv

    def forward(
        self,
        a: torch.Tensor,
        v: torch.Tensor,
        audio_evidence: torch.Tensor | None = None,
        video_evidence: torch.Tensor | None = None,
        mix: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected (B, dim) embeddings → fused (B, dim), weights (B, 2) [audio, video]
        and the scores (B, 2) [Wa·a, Wv·v] they are the softmax of. ``mix``: the
        embeddings the weights mix, when they are not ``a`` and ``v`` (detached copies). Where the scores
        read evidence features, each score layer sees ``[a; evidence]`` (the weights
        still mix ``a`` and ``v`` alone)."""
        assert self.audio_score is not None and self.video_score is not None  # only fused models call this
        sa = a if audio_evidence is None else torch.cat([a, audio_evidence.to(a.dtype)], dim=1)
        sv = v if video_evidence is None else torch.cat([v, video_evidence.to(v.dtype)], dim=1)
        scores = torch.cat([self.audio_score(sa), self.video_score(sv)], dim=1)
        weights = torch.softmax(scores, dim=1)
        ma, mv = mix if mix is not None else (a, v)
        fused = weights[:, :1] * ma + weights[:, 1:] * mv
        return fused, weights, scores


CONFIDENCE_DIM = 2


def head_confidence(head: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """(B, 2) detached: how sure ``head`` is on one branch's embedding ``z`` alone, as
    the log-sum-exp of its logits (the negated free energy, QMF's quality signal: Zhang
    et al., ICML 2023) and its top log-probability. A stream whose evidence a corruption
    destroyed, or a clip unlike any the branch was trained on, leaves its head less sure,
    which the score can read whatever the corruption was. Detached, so the attention
    cannot make a head look sure; no dropout, so it is the head the fused logits use."""
    with torch.no_grad():
        logits = head(z).float()
        lse = torch.logsumexp(logits, dim=1)
        return torch.stack([lse, logits.amax(dim=1) - lse], dim=1)


def _join(evidence: torch.Tensor | None, more: torch.Tensor) -> torch.Tensor:
    return more if evidence is None else torch.cat([evidence.to(more.dtype), more], dim=1)


@dataclass
class FusionOutput:
    logits: torch.Tensor  # (B, C) fused (or the unimodal model's) prediction
    weights: torch.Tensor  # (B, 2) [w_audio, w_video]; one-hot for unimodal models
    audio_logits: torch.Tensor | None  # auxiliary head on the audio embedding alone (None: no aux heads)
    video_logits: torch.Tensor | None
    scores: torch.Tensor | None = None  # (B, 2) attention scores [Wa·a, Wv·v]; None for unimodal models


class Features(NamedTuple):
    """What ``forward_features`` returns: the projected embeddings (B, embed_dim) and the
    evidence features the attention scores read (B, 2) each; None where absent."""

    a: torch.Tensor | None
    v: torch.Tensor | None
    audio_evidence: torch.Tensor | None = None
    video_evidence: torch.Tensor | None = None


class FusionModel(nn.Module):
    """Late fusion with modality attention, or a unimodal baseline from the same parts."""

    def __init__(self, cfg: ModelConfig, *, load_weights: bool = True, imagenet_url: str | None = None):
        """``load_weights`` False: the video encoder starts from random weights without
        reading ``cfg.video_weights``; ``imagenet_url``: see ``pretrained.fetch_imagenet``."""
        super().__init__()
        if cfg.num_classes is None:
            raise ValueError(
                "ModelConfig.num_classes is not set (training takes it from the shards' label map)"
            )
        self.cfg = cfg
        dim = cfg.embed_dim
        self.audio = (
            AudioEncoder(
                cfg.audio_width, cfg.audio_frontend, cfg.audio_filters, cfg.sample_rate, cfg.spec_augment
            )
            if cfg.modalities in ("both", "audio")
            else None
        )
        self.video = (
            VideoEncoder(cfg.video_weights, load=load_weights, imagenet_url=imagenet_url)
            if cfg.modalities in ("both", "video")
            else None
        )
        # what a checkpoint records of the video encoder's starting weights (None: no video)
        self.video_init = self.video.init if self.video else None
        self.use_evidence = cfg.evidence and cfg.modalities == "both"
        self.use_confidence = cfg.confidence and cfg.modalities == "both"
        if self.use_confidence and not (cfg.aux_heads and cfg.shared_head):
            raise ConfigError(
                "train.model.confidence needs the shared head and aux_weight > 0: the scores read "
                "the classifier's confidence on each branch alone"
            )
        extra = CONFIDENCE_DIM if self.use_confidence else 0
        self.attention = ModalityAttention(
            self.audio.out_dim if self.audio else None,
            self.video.out_dim if self.video else None,
            dim,
            (AudioEncoder.evidence_dim if self.use_evidence else 0) + extra,
            (VideoEncoder.evidence_dim if self.use_evidence else 0) + extra,
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(dim, cfg.num_classes)
        own = cfg.aux_heads and not cfg.shared_head  # shared: the classifier is each modality's head too
        self.audio_head = nn.Linear(dim, cfg.num_classes) if self.audio and own else None
        self.video_head = nn.Linear(dim, cfg.num_classes) if self.video and own else None

    def forward_features(self, waveform: torch.Tensor | None, frames: torch.Tensor | None) -> Features:
        """Per-modality embeddings after projection, (B, embed_dim) each, and (fused
        models with ``evidence``) the features the scores read. None where the model has
        no such branch or the input is None (a file with one modality is predicted from
        that one through ``forward_head``)."""
        a = v = ea = ev = None
        if self.audio and waveform is not None:
            assert self.attention.audio_proj is not None  # built with the audio branch
            a = self.attention.audio_proj(self.audio(waveform))
            ea = self.audio.evidence(waveform) if self.use_evidence else None
        if self.video and frames is not None:
            per_frame = self.video.forward_frames(frames)
            assert self.attention.video_proj is not None  # built with the video branch
            v = self.attention.video_proj(per_frame.mean(dim=1))
            ev = self.video.evidence(frames, per_frame) if self.use_evidence else None
        return Features(a, v, ea, ev)

    def _head(self, modality: str) -> nn.Module | None:
        """A modality's own head (the aux head): the classifier itself when shared, in a
        fused model trained with aux heads."""
        if self.cfg.shared_head:
            return self.classifier if self.cfg.aux_heads and self.cfg.modalities == "both" else None
        return self.audio_head if modality == "audio" else self.video_head

    def forward_head(
        self,
        a: torch.Tensor | None,
        v: torch.Tensor | None,
        audio_evidence: torch.Tensor | None = None,
        video_evidence: torch.Tensor | None = None,
    ) -> FusionOutput:
        scores = None
        if a is not None and v is not None:
            if self.use_confidence:
                audio_evidence = _join(audio_evidence, head_confidence(self.classifier, a))
                video_evidence = _join(video_evidence, head_confidence(self.classifier, v))
            mix = (a.detach(), v.detach()) if self.cfg.isolate_branches else None
            fused, weights, scores = self.attention(a, v, audio_evidence, video_evidence, mix)
        else:
            fused = a if a is not None else v
            assert fused is not None, "forward_head needs at least one embedding"
            weights = torch.zeros(fused.shape[0], 2, device=fused.device, dtype=fused.dtype)
            weights[:, 0 if a is not None else 1] = 1.0
        head_a, head_v = self._head("audio"), self._head("video")
        return FusionOutput(
            logits=self.classifier(self.dropout(fused)),
            weights=weights,
            audio_logits=head_a(self.dropout(a)) if a is not None and head_a is not None else None,
            video_logits=head_v(self.dropout(v)) if v is not None and head_v is not None else None,
            scores=scores,
        )

    def forward(self, waveform: torch.Tensor | None, frames: torch.Tensor | None) -> FusionOutput:
        return self.forward_head(*self.forward_features(waveform, frames))


@dataclass(frozen=True)
class LossConfig:
    # × each unimodal head's cross-entropy: keeps both encoders learning
    aux_weight: float = bounded(0.3, ge=0, le=1000)
    label_smoothing: float = bounded(0.0, ge=0, le=1)
    reliability_weight: float = bounded(0.0, ge=0, le=1000)  # × the attention reliability term (0 = off)
    reliability_sharpness: float = bounded(2.0, gt=0, le=100)  # γ in the target c_a^γ / (c_a^γ + c_v^γ)
    # × the dead-modality term: all weight to the live stream where augmentation killed one
    dead_weight: float = bounded(0.0, ge=0, le=1000)
    # a blank stream's own head (muted, black) is taught the uniform distribution, not the class
    # it cannot know: the fused logits add w_dead × its logits, and a lean there tips the live
    # head's near-ties (docs/model.md)
    dead_uniform: bool = False

    def __post_init__(self) -> None:
        check_bounds(self, "train.loss")


def soft_targets(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices (B,) or already-soft targets (B, C) (mixup) → (B, C) float."""
    if target.ndim == 2:
        return target.float()
    return F.one_hot(target, num_classes).float()


def modality_confidence(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Probability a head gives the target (expected under soft targets), detached."""
    return (torch.softmax(logits.detach().float(), dim=1) * soft).sum(dim=1)


def reliability_targets(out: FusionOutput, soft: torch.Tensor, sharpness: float = 1.0) -> torch.Tensor:
    """Target audio weight per sample, from the unimodal heads' detached confidences in
    the true class: ``c_a^γ / (c_a^γ + c_v^γ)`` (γ = ``sharpness``; equivalently a
    softmax of the negated unimodal losses at temperature 1/γ). A muted track leaves
    the audio head at the class prior (c_a ≈ 1/C) while the video head stays confident,
    so the target sends the weight to video; clean clips where both heads are sure get
    0.5. In the spirit of QMF (Zhang et al., ICML 2023): the modality whose own head has
    the lower loss should get the higher weight, as a soft target rather than a hinge.
    γ > 1 sharpens it: with γ = 1, c_a = 1/6 against c_v = 0.5 asks for only 0.25."""
    assert out.audio_logits is not None and out.video_logits is not None  # a fused model with aux heads
    c_a = modality_confidence(out.audio_logits, soft).clamp_min(1e-6) ** sharpness
    c_v = modality_confidence(out.video_logits, soft).clamp_min(1e-6) ** sharpness
    return c_a / (c_a + c_v)


def reliability_loss(out: FusionOutput, soft: torch.Tensor, sharpness: float = 1.0) -> torch.Tensor:
    """Cross-entropy between the attention weights and :func:`reliability_targets`;
    its gradient reaches both scores (Wa·a and Wv·v) through the softmax."""
    t_a = reliability_targets(out, soft, sharpness)
    assert out.scores is not None  # a fused model
    log_w = torch.log_softmax(out.scores.float(), dim=1)
    return -(t_a * log_w[:, 0] + (1 - t_a) * log_w[:, 1]).mean()


def attention_agrees(out: FusionOutput, reference: torch.Tensor) -> torch.Tensor:
    """Attention agreement per clip (B,) bool: the modality with the higher attention
    weight is the one whose own head gives the ``reference`` class the higher
    probability. With the true class as reference (evaluation) this asks "did
    attention trust the modality that knew the answer?"; without labels (labelling),
    pass the fused prediction."""
    assert out.audio_logits is not None and out.video_logits is not None  # a fused model with aux heads
    c_a = torch.softmax(out.audio_logits.float(), dim=1).gather(1, reference[:, None])[:, 0]
    c_v = torch.softmax(out.video_logits.float(), dim=1).gather(1, reference[:, None])[:, 0]
    return (out.weights[:, 0] > out.weights[:, 1]) == (c_a > c_v)


def dead_modality_loss(out: FusionOutput, dead: torch.Tensor) -> torch.Tensor:
    """``-log w_live`` for the clips whose audio or video the augmentation killed
    (``dead`` (B, 2) bool [audio, video]: muted; black or frozen), averaged over the
    batch (clips with both streams alive add 0). The reliability target alone asks a
    dead stream for c_dead^γ / (c_dead^γ + c_live^γ), which is far from 0 when the live
    stream is weak too (c_dead = 1/C against c_live = 2/C asks for 1/9 at γ = 3, 1/3 at
    γ = 1); a dead stream carries no evidence at all, so its target is 0 whatever the
    other knows (ModDrop's training with a known missing modality, as a target for the
    attention instead of a zeroed input)."""
    assert out.scores is not None  # a fused model
    log_w = torch.log_softmax(out.scores.float(), dim=1)
    live = dead.flip(1).float()  # the live stream of a clip whose other stream is dead
    return -(live * log_w).sum(dim=1).mean()


def _ce(logits: torch.Tensor, soft: torch.Tensor, smoothing: float) -> torch.Tensor:
    if smoothing > 0:
        soft = soft * (1 - smoothing) + smoothing / soft.shape[1]
    return -(soft * torch.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def fusion_loss(
    out: FusionOutput,
    target: torch.Tensor,
    cfg: LossConfig,
    dead: torch.Tensor | None = None,
    blank: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy on the fused logits (label smoothing optional), plus
    ``aux_weight`` × each unimodal head's (modality imbalance: without them the
    stronger modality starves the other's encoder), plus ``reliability_weight`` × the
    attention reliability term, plus ``dead_weight`` × the dead-modality term for the
    clips ``dead`` marks; with ``dead_uniform`` a blank stream's own head (``blank``: the
    muted and black of the dead; ``dead`` where not given) is taught the uniform
    distribution on those clips. ``target``: class indices or soft (mixup) targets.
    Returns the loss and its parts: detached tensors on the loss's device, so a
    training step never waits for the device (the loop reads them every N steps)."""
    soft = soft_targets(target, out.logits.shape[1])
    loss = _ce(out.logits, soft, cfg.label_smoothing)
    parts = {"fused": loss.detach()}
    for i, (name, aux) in enumerate((("audio", out.audio_logits), ("video", out.video_logits))):
        if aux is not None and cfg.aux_weight > 0:
            own = soft
            silent = blank if blank is not None else dead
            if cfg.dead_uniform and silent is not None:
                own = torch.where(silent[:, i : i + 1], torch.full_like(soft, 1 / soft.shape[1]), soft)
            term = _ce(aux, own, cfg.label_smoothing)
            parts[name] = term.detach()
            loss = loss + cfg.aux_weight * term
    if cfg.reliability_weight > 0 and out.scores is not None and out.audio_logits is not None:
        term = reliability_loss(out, soft, cfg.reliability_sharpness)
        parts["reliability"] = term.detach()
        loss = loss + cfg.reliability_weight * term
    if cfg.dead_weight > 0 and out.scores is not None and dead is not None:
        term = dead_modality_loss(out, dead)
        parts["dead"] = term.detach()
        loss = loss + cfg.dead_weight * term
    return loss, parts


def warn_random_init(cfg: ModelConfig) -> None:
    if cfg.modalities != "audio" and cfg.video_weights == "none":
        warnings.warn(
            "ResNet-18 starts from random weights (--video-weights none): expect slower learning "
            "than from ImageNet weights",
            stacklevel=2,
        )
