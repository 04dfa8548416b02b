"""Exact synthetic media, made in-process with PyAV.

Two uses:

* **Exact clips** (``write_clip``): any container / codec / size / fps / duration /
  audio rate / channels, returning the exact waveform and frames that were encoded.
  Every frame carries a barcode of its index (``read_frame_index``) so decode tests can
  assert *which* frames came back, and audio values sit on the 16-bit grid so a
  lossless codec (FLAC, PCM) round-trips bit-exactly.
* **Class-conditional sets** (``make_class_conditional_set``): small labelled
  datasets where each class is carried by audio only, video only, or both, with the
  informative modality recorded per clip. They make learning and robustness tests
  meaningful and let a user smoke-test a cluster with no data at all.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.container import OutputContainer

_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 6: "5.1", 8: "7.1"}
_CONTAINER_FORMATS = {
    "mkv": "matroska",
    "mp4": "mp4",
    "mov": "mov",
    "webm": "webm",
    "avi": "avi",
    "ts": "mpegts",
    "ogg": "ogg",
    "flac": "flac",
    "wav": "wav",
    "mp3": "mp3",
    "m4a": "mp4",
}
BARCODE_BITS = 12


@dataclass(frozen=True)
class SynthSpec:
    """What to encode. ``video_codec=None`` makes an audio-only file, ``audio_codec=None``
    a file with no audio track."""

    container: str = "mp4"
    video_codec: str | None = "libx264"
    audio_codec: str | None = "aac"
    width: int = 320
    height: int = 240
    fps: float = 25.0
    duration: float = 10.0
    sample_rate: int = 44_100
    channels: int = 1
    crf: int = 18
    preset: str = "veryfast"
    pix_fmt: str = "yuv420p"
    audio_bitrate: int | None = None
    rotation: int = 0  # display-matrix rotation, degrees counter-clockwise

    @property
    def fps_fraction(self) -> Fraction:
        return Fraction(self.fps).limit_denominator(1001)

    @property
    def num_frames(self) -> int:
        return max(1, round(self.duration * self.fps_fraction))

    @property
    def num_samples(self) -> int:
        return round(self.duration * self.sample_rate)


@dataclass(frozen=True, kw_only=True)
class SynthClip:
    """A written clip and the exact arrays that went into the encoder."""

    path: Path
    spec: SynthSpec
    frames: np.ndarray | None  # (T, H, W, 3) uint8, RGB
    waveform: np.ndarray | None  # (C, N) float32 on the 16-bit grid
    frame_times: np.ndarray = field(default_factory=lambda: np.zeros(0))  # seconds, per frame


# ----------------------------------------------------------------------------- content


def _barcode_box(height: int, width: int) -> tuple[int, int, int, int]:
    """Where the barcode sits: the top strip of the frame's central square, which any
    short-side resize + centre crop keeps, so decoded model inputs stay readable."""
    side = min(height, width)
    y0, x0 = (height - side) // 2, (width - side) // 2
    return y0, x0, max(2, side // 8), side // BARCODE_BITS


def barcode_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Frames whose barcode strip encodes the frame index in ``BARCODE_BITS``
    black/white cells (robust to lossy coding); below it a moving square on a
    colour gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [
            xx * 255 // max(width - 1, 1),
            yy * 255 // max(height - 1, 1),
            np.full_like(xx, int(rng.integers(40, 200))),
        ],
        -1,
    ).astype(np.uint8)
    frames = np.repeat(base[None], n, axis=0)
    y0, x0, strip, cell = _barcode_box(height, width)
    side = max(2, min(height, width) // 5)
    for i in range(n):
        x = int((width - side) * (i % 50) / 49)
        y = y0 + strip + (min(height, width) - strip - side) // 2
        frames[i, y : y + side, x : x + side] = (255, 255, 255)
        if cell >= 2:
            for b in range(BARCODE_BITS):
                frames[i, y0 : y0 + strip, x0 + b * cell : x0 + (b + 1) * cell] = 255 * ((i >> b) & 1)
    return frames


def read_frame_index(frame: np.ndarray) -> int:
    """Inverse of ``barcode_frames``: the index in an RGB frame, either as encoded or
    after a resize + centre crop to a square."""
    y0, x0, strip, cell = _barcode_box(*frame.shape[:2])
    if cell < 2:
        raise ValueError(f"frame {frame.shape[1]}x{frame.shape[0]} is too small to carry a barcode")
    region = frame[y0 + strip // 4 : y0 + strip - strip // 4, x0 : x0 + cell * BARCODE_BITS]
    luma = region.astype(np.float32).mean(axis=(0, 2))
    cells = luma.reshape(BARCODE_BITS, cell)[:, cell // 4 : cell - cell // 4].mean(axis=1)
    return int(sum(1 << b for b, v in enumerate(cells) if v > 127))


def quantize16(x: np.ndarray) -> np.ndarray:
    """Snap to the signed 16-bit grid so lossless codecs return exactly these values."""
    return (np.clip(np.round(x * 32768.0), -32768, 32767) / 32768.0).astype(np.float32)


def tone_waveform(n: int, rate: int, channels: int, base_hz: float = 440.0, amp: float = 0.5) -> np.ndarray:
    """Channel ``c`` is a sine at ``base_hz * (c + 1)``: distinct per channel so a
    downmix or a channel swap is visible in tests."""
    t = np.arange(n, dtype=np.float64) / rate
    chans = [amp * np.sin(2 * np.pi * base_hz * (c + 1) * t) for c in range(channels)]
    return quantize16(np.stack(chans))


# ----------------------------------------------------------------------------- writing


def write_clip(
    path: str | Path,
    spec: SynthSpec,
    frames: np.ndarray | None = None,
    waveform: np.ndarray | None = None,
    seed: int = 0,
    frame_times: np.ndarray | None = None,
) -> SynthClip:
    """Encode ``frames``/``waveform`` (defaults: barcode frames, per-channel tones) into
    ``path`` as ``spec`` says. ``frame_times`` (seconds, increasing) makes the video
    variable-frame-rate with those exact timestamps (millisecond time base).
    Written under a temporary name, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.video_codec and frames is None:
        frames = barcode_frames(spec.num_frames, spec.height, spec.width, seed)
    if spec.audio_codec and waveform is None:
        waveform = tone_waveform(spec.num_samples, spec.sample_rate, spec.channels)
    if not spec.video_codec:
        frames = None
    if not spec.audio_codec:
        waveform = None
    fps = spec.fps_fraction
    if frame_times is not None:
        if frames is None or len(frame_times) != len(frames):
            raise ValueError("frame_times needs one timestamp per frame")
        video_tb = Fraction(1, 1000)
        pts = np.round(np.asarray(frame_times) * 1000).astype(int)
    else:
        video_tb = 1 / fps
        pts = np.arange(0 if frames is None else len(frames))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fmt = _CONTAINER_FORMATS.get(spec.container, spec.container)
    try:
        with av.open(str(tmp), "w", format=fmt) as out:
            vstream = _add_video(out, spec, frames, fps, video_tb) if frames is not None else None
            astream = _add_audio(out, spec, waveform.shape[0]) if waveform is not None else None
            _mux(out, vstream, astream, frames, waveform, spec, pts * video_tb, pts)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    times = (pts * float(video_tb)) if frames is not None else np.zeros(0)
    return SynthClip(path=path, spec=spec, frames=frames, waveform=waveform, frame_times=times)


def _add_video(
    out: OutputContainer, spec: SynthSpec, frames: np.ndarray, fps: Fraction, time_base: Fraction
) -> av.VideoStream:
    """The video stream for ``frames`` (T, H, W, 3), with the encoder options ``spec`` asks for."""
    assert spec.video_codec  # write_clip drops the frames without a video codec
    vstream = out.add_stream(spec.video_codec, rate=fps)
    assert isinstance(vstream, av.VideoStream)
    vstream.width, vstream.height = frames.shape[2], frames.shape[1]
    vstream.pix_fmt = spec.pix_fmt
    if spec.video_codec in ("libx264", "libx265"):
        vstream.options = {"crf": str(spec.crf), "preset": spec.preset}
    elif spec.video_codec in ("libvpx-vp9", "libvpx"):
        vstream.options = {"crf": str(spec.crf + 10), "b": "0", "deadline": "realtime", "cpu-used": "8"}
    vstream.codec_context.time_base = time_base
    if spec.rotation:
        vstream.set_display_rotation(spec.rotation)
    return vstream


def _add_audio(out: OutputContainer, spec: SynthSpec, channels: int) -> av.AudioStream:
    """The audio stream for a ``channels``-channel waveform."""
    assert spec.audio_codec  # write_clip drops the waveform without an audio codec
    astream = out.add_stream(spec.audio_codec, rate=spec.sample_rate, layout=_LAYOUTS[channels])
    assert isinstance(astream, av.AudioStream)
    astream.codec_context.time_base = Fraction(1, spec.sample_rate)
    if spec.audio_bitrate:
        astream.bit_rate = spec.audio_bitrate
    return astream


def _mux(
    out: OutputContainer,
    vstream: av.VideoStream | None,
    astream: av.AudioStream | None,
    frames: np.ndarray | None,
    waveform: np.ndarray | None,
    spec: SynthSpec,
    times: np.ndarray,
    pts: np.ndarray,
) -> None:
    """Interleave video and audio packets in time order (what real muxers produce).
    Audio goes in as float planar; PyAV converts to the encoder's sample format."""
    chunk = 1024
    n_v = 0 if frames is None else len(frames)
    n_a = 0 if waveform is None else waveform.shape[1]
    vi = ai = 0
    while vi < n_v or ai < n_a:
        v_time = times[vi] if vi < n_v else float("inf")
        a_time = ai / spec.sample_rate if ai < n_a else float("inf")
        if v_time <= a_time:
            assert frames is not None and vstream is not None  # a frame is left: vi < n_v
            frame = av.VideoFrame.from_ndarray(frames[vi], format="rgb24")
            frame.pts = int(pts[vi])
            out.mux(vstream.encode(frame))
            vi += 1
        else:
            assert waveform is not None and astream is not None  # a sample is left: ai < n_a
            block = waveform[:, ai : ai + chunk]
            aframe = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(block), format="fltp", layout=_LAYOUTS[waveform.shape[0]]
            )
            aframe.sample_rate = spec.sample_rate
            aframe.pts = ai
            out.mux(astream.encode(aframe))
            ai += chunk
    if vstream is not None:
        out.mux(vstream.encode(None))
    if astream is not None:
        out.mux(astream.encode(None))


# ----------------------------------------------------------------------------- classes


@dataclass(frozen=True)
class SynthClass:
    """A class carried by ``audio`` and/or ``video`` patterns (None: that modality is
    drawn from a neutral distribution shared by every class, so it says nothing)."""

    name: str
    audio: str | None = None
    video: str | None = None

    @property
    def informative(self) -> str:
        return "both" if self.audio and self.video else ("audio" if self.audio else "video")


DEFAULT_CLASSES: tuple[SynthClass, ...] = (
    SynthClass("low hum", audio="tone_low"),
    SynthClass("rising chirp", audio="chirp_up"),
    SynthClass("red square", video="square_red"),
    SynthClass("bouncing ball", video="ball_bounce"),
    SynthClass("drum and stripes", audio="pulses", video="stripes"),
    SynthClass("whistle and flash", audio="tone_high", video="flash"),
)


def _audio_pattern(name: str | None, rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    t = np.arange(n) / rate
    noise = rng.normal(0.0, 1.0, n)
    brown = np.cumsum(noise)
    brown = (brown - np.convolve(brown, np.ones(256) / 256, mode="same")) / 40.0
    level = rng.uniform(0.03, 0.08)
    out = level * brown
    jitter = rng.uniform(0.94, 1.06)
    phase = rng.uniform(0, 2 * np.pi)
    if name == "tone_low":
        out += 0.4 * np.sin(2 * np.pi * 220 * jitter * t + phase)
    elif name == "tone_high":
        out += 0.3 * np.sin(2 * np.pi * 2000 * jitter * t + phase)
    elif name == "chirp_up":
        period = rng.uniform(0.4, 0.6)
        f = 300 + 1500 * jitter * ((t % period) / period)
        out += 0.35 * np.sin(2 * np.pi * np.cumsum(f) / rate)
    elif name == "pulses":
        period = rng.uniform(0.2, 0.3)
        env = np.exp(-((t % period) / 0.02))
        out += 0.6 * env * rng.normal(0, 1, n).clip(-3, 3) / 3
    elif name is not None:
        raise ValueError(f"unknown audio pattern {name!r}")
    return out


def _video_pattern(name: str | None, rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    bg = rng.integers(60, 180, size=3)
    frames = np.empty((n, h, w, 3), dtype=np.float32)
    frames[:] = bg
    frames += rng.normal(0, 12, size=(1, h, w, 3))  # fixed texture
    yy, xx = np.mgrid[0:h, 0:w]
    # Neutral distractor present in every clip: a grey blob wandering randomly.
    bx, by = rng.uniform(0.2, 0.8, 2)
    vx, vy = rng.uniform(-0.01, 0.01, 2)
    grey = rng.integers(90, 170)
    s = min(h, w)
    side = x0 = y0 = 0
    if name == "square_red":  # one square per clip, at the same place in every frame
        side = int(s * rng.uniform(0.3, 0.4))
        x0 = int(rng.uniform(0, w - side))
        y0 = int(rng.uniform(0, h - side))
    for i in range(n):
        cx, cy = ((bx + vx * i) % 1) * w, ((by + vy * i) % 1) * h
        blob = (xx - cx) ** 2 + (yy - cy) ** 2 < (0.12 * s) ** 2
        frames[i][blob] = grey
        t = i / max(n - 1, 1)
        if name == "square_red":
            frames[i, y0 : y0 + side, x0 : x0 + side] = (220, 30, 30)
        elif name == "ball_bounce":
            r = 0.12 * s
            cx2 = w * (0.2 + 0.6 * t)
            cy2 = h * (0.25 + 0.5 * abs(np.sin(3 * np.pi * t)))
            frames[i][(xx - cx2) ** 2 + (yy - cy2) ** 2 < r**2] = (30, 200, 60)
        elif name == "stripes":
            period = max(4, int(s / 6))
            frames[i][((xx + yy + 2 * i) // (period // 2)) % 2 == 0] = (20, 20, 200)
        elif name == "flash":
            frames[i] = frames[i] * 0.4 + 153 * (i % 2)
        elif name is not None:
            raise ValueError(f"unknown video pattern {name!r}")
    return frames.clip(0, 255).astype(np.uint8)


@dataclass(frozen=True, kw_only=True)
class SynthSample:
    key: str
    path: str
    label: str
    split: str
    informative: str


def make_class_conditional_set(
    out_dir: str | Path,
    per_class: int,
    spec: SynthSpec | None = None,
    classes: tuple[SynthClass, ...] = DEFAULT_CLASSES,
    seed: int = 0,
    test_fraction: float = 0.25,
) -> list[SynthSample]:
    """Write ``per_class`` clips per class plus ``labels.csv`` (VGGSound format, no
    header: ``id,start,label,split``) and ``synth.jsonl`` (informative modality).

    Clips are named ``{id}_000000.mp4`` like downloaded VGGSound clips; the last
    ``test_fraction`` of each class is the test split (stratified).
    """
    spec = spec or SynthSpec(width=64, height=64, duration=2.0, fps=8, sample_rate=16_000)
    out_dir = Path(out_dir)
    samples: list[SynthSample] = []
    n_test = max(1, round(per_class * test_fraction)) if per_class > 1 else 0
    for ci, cls in enumerate(classes):
        for j in range(per_class):
            rng = np.random.default_rng([seed, ci, j])
            clip_id = f"syn{ci:02d}_{j:04d}"
            path = out_dir / f"{clip_id}_000000.{spec.container}"
            frames = _video_pattern(cls.video, rng, spec.num_frames, spec.height, spec.width)
            wave = quantize16(
                np.clip(_audio_pattern(cls.audio, rng, spec.num_samples, spec.sample_rate), -1, 1)
            )
            write_clip(path, spec, frames=frames, waveform=np.repeat(wave[None], spec.channels, 0))
            split = "test" if j >= per_class - n_test else "train"
            samples.append(
                SynthSample(
                    key=f"{clip_id}_000000",
                    path=path.name,
                    label=cls.name,
                    split=split,
                    informative=cls.informative,
                )
            )
    with open(out_dir / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        for s in samples:
            writer.writerow([s.key.rsplit("_", 1)[0], 0, s.label, s.split])
    with open(out_dir / "synth.jsonl", "w") as f:
        for s in samples:
            f.write(json.dumps(asdict(s)) + "\n")
    return samples
