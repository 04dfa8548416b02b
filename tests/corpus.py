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


def make_label_corpus(root: Path) -> dict[str, str]:
    """The label job's corpus: file name → expected ``error_class``, or ``"ok"`` for a
    file it must label (it labels audio-only, 1-frame and tiny files, unlike preprocess)."""
    import av

    expected = make_malformed_corpus(root)
    expected.update({"audio_only.mp4": "ok", "one_frame.mp4": "ok", "tiny_16x16.mp4": "ok"})
    good = write_clip(root / "video_only.mp4", SynthSpec(audio_codec=None, duration=2.0, width=160, height=120))
    expected["video_only.mp4"] = "ok"
    data = bytearray(write_clip(root / "_c.mp4", SynthSpec(duration=2.0, width=160, height=120)).path.read_bytes())
    (root / "_c.mp4").unlink()
    middle = len(data) // 2
    data[middle:middle + 2000] = bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8))
    (root / "corrupt_middle.mp4").write_bytes(bytes(data))
    expected["corrupt_middle.mp4"] = "ok|decode_error"
    write_clip(root / "short_0.3s.mp4", SynthSpec(duration=0.3, width=160, height=120))
    expected["short_0.3s.mp4"] = "ok"
    write_clip(root / "uhd_4k.mp4", SynthSpec(duration=0.4, fps=10, width=3840, height=2160, audio_codec=None))
    expected["uhd_4k.mp4"] = "ok"
    write_clip(root / "long_tiny.mp4", SynthSpec(duration=25.0, fps=2, width=64, height=64, sample_rate=16_000))
    expected["long_tiny.mp4"] = "ok"
    write_clip(root / "hires_audio.mkv", SynthSpec(container="mkv", audio_codec="flac", sample_rate=96_000,
                                                   channels=6, duration=1.0, width=96, height=96))
    expected["hires_audio.mkv"] = "ok"
    write_clip(root / "ünïcode name with spaces.mp4", SynthSpec(duration=1.0, width=96, height=96))
    expected["ünïcode name with spaces.mp4"] = "ok"
    for fmt, name in (("PNG", "png_as.mp4"), ("GIF", "gif_as.mp4")):
        buf = io.BytesIO()
        Image.fromarray(np.full((48, 48, 3), 90, np.uint8)).save(buf, format=fmt)
        (root / name).write_bytes(buf.getvalue())
        expected[name] = "image_not_video"
    with av.open(str(root / "raw.h264"), "w", format="h264") as out:  # an elementary stream, no container
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 96, "yuv420p"
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(np.full((96, 96, 3), i * 8, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    expected["raw.h264"] = "ok"
    (root / "dangling.mp4").symlink_to(root / "does_not_exist.mp4")
    expected["dangling.mp4"] = "missing_file"
    (root / "a_directory.mp4").mkdir()
    expected["a_directory.mp4"] = "not_a_file"
    (root / "linked.mp4").symlink_to(good.path)
    expected["linked.mp4"] = "ok"
    return expected
