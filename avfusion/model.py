"""The late-fusion model: waveform CNN + per-frame ResNet-18, fused by modality attention.

No distributed code here (the training loop wraps the model); every module declares
its input and output sizes. ``forward_features`` returns the per-modality embeddings,
``forward_head`` the logits and the attention weights, so evaluation and labelling
can report what each modality contributes.

    [w_audio, w_video] = softmax([Wa·a, Wv·v]);  fused = w_audio·a + w_video·v
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from avfusion import storage

log = logging.getLogger(__name__)

MODALITIES = ("both", "audio", "video")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's IMAGENET1K_V1 file name


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int
    modalities: str = "both"  # both | audio | video (unimodal baselines share the encoders)
    embed_dim: int = 256  # shared size after projection, what attention mixes
    audio_width: int = 64  # channels of the first audio block; doubles per block
    video_weights: str = "none"  # imagenet | none | path to a ResNet-18 state dict
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.modalities not in MODALITIES:
            raise ValueError(f"modalities must be one of {MODALITIES}, got {self.modalities!r}")
        if self.num_classes < 1:
            raise ValueError("num_classes must be >= 1")


class AudioEncoder(nn.Module):
    """1-D CNN on the raw waveform: a strided front end (25 ms windows, 10 ms hop at
    16 kHz) learns a filterbank, then four conv blocks downsample by 4 each, and
    global average + max pooling gives a fixed embedding whatever the clip length."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.out_dim = width * 8 * 2
        layers: list[nn.Module] = [nn.Conv1d(1, width, kernel_size=400, stride=160, padding=200, bias=False),
                                   nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
        channels = width
        for i in range(4):
            out = width * 2 ** min(i + 1, 3)
            layers += [nn.Conv1d(channels, out, kernel_size=3, padding=1, bias=False), nn.BatchNorm1d(out),
                       nn.ReLU(inplace=True), nn.Conv1d(out, out, kernel_size=3, padding=1, bias=False),
                       nn.BatchNorm1d(out), nn.ReLU(inplace=True), nn.MaxPool1d(4 if i < 3 else 2)]
            channels = out
        self.body = nn.Sequential(*layers)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """(B, N) float in [-1, 1] → (B, out_dim)."""
        x = self.body(waveform.unsqueeze(1))
        return torch.cat([x.mean(dim=-1), x.amax(dim=-1)], dim=1)


def _resnet18(weights: str) -> nn.Module:
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    if weights == "none":
        return net
    if weights == "imagenet":
        path = Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILE
        if not path.exists():
            raise FileNotFoundError(
                f"ImageNet weights for ResNet-18 need {path} (torchvision's {RESNET18_FILE}); nothing is "
                f"downloaded at run time. Copy the file there, pass --video-weights PATH, or use "
                f"--video-weights none.")
    else:
        path = weights  # a local path or a URL (s3://…)
        if not storage.exists(path):
            raise FileNotFoundError(f"video weights file {path} does not exist")
    state = storage.load_torch(str(path))
    missing, unexpected = net.load_state_dict(state, strict=False)
    if [k for k in missing if not k.startswith("fc.")] or unexpected:
        raise ValueError(f"{path} is not a ResNet-18 state dict (missing {missing[:3]}, unexpected {unexpected[:3]})")
    log.info("loaded ResNet-18 weights from %s", path)
    return net


class VideoEncoder(nn.Module):
    """ResNet-18 per frame, temporal average pooling over the frames. Takes uint8
    frames and normalises inside, so loaders ship bytes-sized tensors."""

    out_dim = 512

    def __init__(self, weights: str = "none"):
        super().__init__()
        net = _resnet18(weights)
        net.fc = nn.Identity()
        self.backbone = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, H, W, 3) uint8 → (B, 512)."""
        b, t = frames.shape[:2]
        x = frames.reshape(b * t, *frames.shape[2:]).permute(0, 3, 1, 2).float()
        x = (x - self.mean) / self.std
        if x.is_cuda:  # channels_last speeds up cuDNN convolutions; on CPU it only costs copies
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x).view(b, t, -1).mean(dim=1)


class ModalityAttention(nn.Module):
    """Projects both embeddings to ``dim`` and weighs them with a softmax over one
    learned score each: ``[w_a, w_v] = softmax([Wa·a, Wv·v])``."""

    def __init__(self, audio_dim: int, video_dim: int, dim: int):
        super().__init__()
        self.audio_proj = nn.Sequential(nn.Linear(audio_dim, dim), nn.LayerNorm(dim), nn.ReLU(inplace=True))
        self.video_proj = nn.Sequential(nn.Linear(video_dim, dim), nn.LayerNorm(dim), nn.ReLU(inplace=True))
        self.audio_score = nn.Linear(dim, 1)  # Wa
        self.video_score = nn.Linear(dim, 1)  # Wv

    def project(self, audio: torch.Tensor, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.audio_proj(audio), self.video_proj(video)

    def forward(self, a: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected (B, dim) embeddings → fused (B, dim) and weights (B, 2) [audio, video]."""
        weights = torch.softmax(torch.cat([self.audio_score(a), self.video_score(v)], dim=1), dim=1)
        fused = weights[:, :1] * a + weights[:, 1:] * v
        return fused, weights


@dataclass
class FusionOutput:
    logits: torch.Tensor  # (B, C) fused (or the unimodal model's) prediction
    weights: torch.Tensor  # (B, 2) [w_audio, w_video]; one-hot for unimodal models
    audio_logits: torch.Tensor | None  # auxiliary head on the audio embedding alone
    video_logits: torch.Tensor | None


class FusionModel(nn.Module):
    """Late fusion with modality attention, or a unimodal baseline from the same parts."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.audio = AudioEncoder(cfg.audio_width) if cfg.modalities in ("both", "audio") else None
        self.video = VideoEncoder(cfg.video_weights) if cfg.modalities in ("both", "video") else None
        a_dim = self.audio.out_dim if self.audio else 1
        v_dim = self.video.out_dim if self.video else 1
        self.attention = ModalityAttention(a_dim, v_dim, dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(dim, cfg.num_classes)
        self.audio_head = nn.Linear(dim, cfg.num_classes) if self.audio else None
        self.video_head = nn.Linear(dim, cfg.num_classes) if self.video else None

    def forward_features(self, waveform: torch.Tensor | None, frames: torch.Tensor | None
                         ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per-modality embeddings after projection, (B, embed_dim) each (None if unused)."""
        a = self.attention.audio_proj(self.audio(waveform)) if self.audio else None
        v = self.attention.video_proj(self.video(frames)) if self.video else None
        return a, v

    def forward_head(self, a: torch.Tensor | None, v: torch.Tensor | None) -> FusionOutput:
        if a is not None and v is not None:
            fused, weights = self.attention(a, v)
        else:
            fused = a if a is not None else v
            weights = torch.zeros(fused.shape[0], 2, device=fused.device, dtype=fused.dtype)
            weights[:, 0 if a is not None else 1] = 1.0
        return FusionOutput(
            logits=self.classifier(self.dropout(fused)),
            weights=weights,
            audio_logits=self.audio_head(self.dropout(a)) if a is not None else None,
            video_logits=self.video_head(self.dropout(v)) if v is not None else None,
        )

    def forward(self, waveform: torch.Tensor | None, frames: torch.Tensor | None) -> FusionOutput:
        return self.forward_head(*self.forward_features(waveform, frames))


def fusion_loss(out: FusionOutput, target: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """Cross-entropy on the fused logits plus ``aux_weight`` × each unimodal head's:
    the auxiliary terms keep both encoders learning (modality imbalance)."""
    loss = F.cross_entropy(out.logits, target)
    for aux in (out.audio_logits, out.video_logits):
        if aux is not None and aux_weight > 0:
            loss = loss + aux_weight * F.cross_entropy(aux, target)
    return loss


def warn_random_init(cfg: ModelConfig) -> None:
    if cfg.modalities != "audio" and cfg.video_weights == "none":
        warnings.warn("ResNet-18 starts from random weights (--video-weights none): expect slower learning "
                      "than from ImageNet weights", stacklevel=2)
