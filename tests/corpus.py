"""A corpus of malformed and odd media files, with the failure kind each must produce.

Shared by the decode, preprocess and label tests so that every job is held to the
same classification.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from avfusion.synth import SynthSpec, write_clip


def _drop_box(data: bytes, box: bytes) -> bytes:
    out, i = b"", 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        size = size or len(data) - i
        if kind != box:
            out += data[i:i + size]
        i += size
    return out


def make_malformed_corpus(root: Path) -> dict[str, str]:
    """Write the corpus under ``root``; returns file name → expected failure kind."""
    root.mkdir(parents=True, exist_ok=True)
    good = write_clip(root / "_good.tmp.mp4", SynthSpec(duration=2.0, width=160, height=120)).path.read_bytes()
    (root / "_good.tmp.mp4").unlink()
    jpeg = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(jpeg, format="JPEG")
    files = {
        "zero_bytes.mp4": (b"", "not_media"),
        "text_as.mp4": (b"this is not a video\n" * 10, "not_media"),
        "truncated.mp4": (good[: len(good) // 3], "not_media"),
        "moov_missing.mp4": (_drop_box(good, b"moov"), "not_media"),
        "jpeg_as.mp4": (jpeg.getvalue(), "image_not_video"),
    }
    for name, (data, _) in files.items():
        (root / name).write_bytes(data)
    expected = {name: kind for name, (_, kind) in files.items()}
    write_clip(root / "audio_only.mp4", SynthSpec(video_codec=None, duration=2.0))
    expected["audio_only.mp4"] = "no_video"
    write_clip(root / "one_frame.mp4", SynthSpec(duration=1.0, fps=1, width=160, height=120))
    expected["one_frame.mp4"] = "too_few_frames"
    write_clip(root / "tiny_16x16.mp4", SynthSpec(duration=1.0, width=16, height=16))
    expected["tiny_16x16.mp4"] = "too_small"
    return expected
