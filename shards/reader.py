"""Decode one shard sample to numpy arrays (PIL + soundfile), clip by clip.

Used where clips are handled one at a time: robustness evaluation (corrupts decoded
arrays), Ray Data readers of the shards, tests. The training and evaluation loader
(``avfusion.loader``) ships JPEG bytes instead and decodes them in batches on the device."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np
import soundfile as sf
from PIL import Image


@dataclass(frozen=True, kw_only=True)
class DecodedSample:
    key: str
    waveform: np.ndarray  # (N,) float32
    frames: np.ndarray  # (T, S, S, 3) uint8
    class_index: int
    meta: dict


def rgb_from_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes → (H, W, 3) uint8; our frames are RGB already, so no conversion copy."""
    image = Image.open(io.BytesIO(data))
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def frame_names(sample: dict) -> list[str]:
    """The sample's frame members in temporal order (frame0.jpg, frame1.jpg, …)."""
    names = [k for k in sample if k.startswith("frame") and k.endswith(".jpg")]
    return sorted(names, key=lambda k: int(k[5:-4]))


def decode_sample(sample: dict) -> DecodedSample:
    """A raw WebDataset sample (member name → bytes) to arrays."""
    waveform, _ = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
    frames = np.stack([rgb_from_jpeg(sample[n]) for n in frame_names(sample)])
    meta = json.loads(sample["json"])
    return DecodedSample(
        key=sample["__key__"], waveform=waveform, frames=frames, class_index=int(sample["cls"]), meta=meta
    )
