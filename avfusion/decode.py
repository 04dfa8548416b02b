"""Decode one clip window to the model's inputs: a 16 kHz mono waveform and N frames.

Shared by preprocess (before sharding) and label (before the model), so both see
exactly the same tensors. One forward pass over the window: a single seek to the
keyframe before ``start``, then demux audio and video together; only the frames
chosen for output are converted to RGB (conversion dominates the cost otherwise).
PyAV's decoder and converter threads are set explicitly (``threads``) because inside
Ray tasks and DataLoader workers "all cores" oversubscribes the machine.

Salvage, not all-or-nothing: a packet the decoder rejects is skipped (counted in
``quality.corrupt_packets``), a demuxer that stops early (a truncated download, an
overwritten stretch) ends the read, and audio after a gap is placed at its own
timestamp with silence in the gap. The window is then judged on what decoded:

* ``covered_seconds`` = the seconds of the window the decoded content covers, the
  smaller of audio and video when both are used (frames × frame period; real audio
  samples, gaps excluded);
* usable when ``covered_seconds >= min(limits.min_content_seconds, 0.5 × window)``
  (1 s by default; half the window for shorter files), else ``decode_error`` or
  ``empty_window`` — a second of both modalities is the least a 10 s clip model
  (and a person listening) can still classify;
* ``partial`` when ``covered_seconds < 0.9 × window`` (window = the clip length, cut
  at the duration the header states).

A video stream no decoder knows (an unknown codec tag) is ``unsupported_codec``,
unless ``limits.allow_undecodable_video`` (label): then the file is treated as audio
only and ``quality.video_undecodable`` says why. ``limits.deadline_seconds`` bounds
the wall time of one decode (checked between packets, and in FFmpeg's I/O interrupt
callback through ``av.open(timeout=...)``), so no file hangs a worker: ``decode_timeout``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast, overload

import av
import numpy as np
from av.container import InputContainer
from av.stream import Stream

from avfusion.config import ClipSpec, bounded, check_bounds
from avfusion.probe import MediaError, check_local_file


@dataclass(frozen=True)
class DecodeLimits:
    """Caps that turn pathological inputs into a clear ``too_large`` error instead of
    an exhausted worker."""

    max_duration: float = bounded(24 * 3600.0, gt=0, le=30 * 86400)
    max_pixels: int = bounded(4096 * 2304, ge=1, le=16384 * 16384)
    max_fps: float = bounded(1000.0, gt=0, le=100_000)
    min_side: int = bounded(32, ge=1, le=16384)  # smaller frames carry no usable picture
    min_frames: int = bounded(2, ge=1, le=1_000_000)  # a single frame is a still image, not a video
    threads: int = bounded(1, ge=1, le=256)
    allow_missing_video: bool = False
    # Label: a video stream that cannot be decoded beside usable audio → audio only.
    allow_undecodable_video: bool = False
    # Label: animated GIF/APNG/WebP (two frames or more) are short videos, not stills.
    allow_animated_images: bool = False
    min_content_seconds: float = bounded(1.0, ge=0, le=3600)  # module docstring: what "usable" means
    # Wall time for one decode; 10 s clips take < 2 s.
    deadline_seconds: float = bounded(120.0, gt=0, le=86400)
    # Decode only reference frames: ~30 % less H.264 work, but a chosen frame may be
    # one frame away from its exact target. Off by default (exact positions).
    skip_nonref: bool = False

    def __post_init__(self) -> None:
        check_bounds(self, "limits")


# Demuxers FFmpeg picks for still images, whatever the file extension says.
_IMAGE_FORMATS = {"image2", "gif", "apng", "webp", "image2pipe"}


@dataclass(frozen=True)
class Quality:
    """Facts about the source and cheap quality signals, computed once at decode."""

    duration: float | None  # whole file, seconds
    window_start: float
    audio_seconds: float  # real audio inside the window before padding
    video_seconds: float  # time covered by decoded frames inside the window
    has_audio: bool
    has_video: bool
    audio_rms: float
    silent: bool
    frozen: bool
    frame_motion: float  # mean abs difference of consecutive sampled frames (0–255)
    fps: float | None
    width: int | None
    height: int | None
    rotation: int
    video_codec: str | None
    audio_codec: str | None
    sample_rate: int | None
    channels: int | None
    covered_seconds: float = 0.0  # seconds of the window with decoded content (see module doc)
    partial: bool = False  # covered_seconds < 90 % of the window: salvaged from a damaged file
    corrupt_packets: int = 0  # packets the decoders rejected and that were skipped
    video_undecodable: bool = False  # a video stream exists but no decoder could read it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DecodedClip:
    waveform: np.ndarray  # (spec.num_samples,) float32 in [-1, 1]
    frames: np.ndarray  # (spec.num_frames, S, S, 3) uint8 RGB
    quality: Quality


SILENCE_RMS = 1e-4  # -80 dBFS
FROZEN_MOTION = 0.5  # mean abs pixel change between sampled frames, 0–255 scale


def frame_times(start: float, seconds: float, n: int) -> np.ndarray:
    """Centres of ``n`` equal segments of the window: uniform, never the very first
    (often black) or last (often cut) frame."""
    return start + (np.arange(n) + 0.5) * seconds / n


def _to_square_rgb(frame: av.VideoFrame, size: int, threads: int) -> np.ndarray:
    """Resize the short side to ``size`` and centre-crop, honouring display rotation."""
    rotation = int(frame.rotation or 0) % 360
    w, h = frame.width, frame.height
    dw, dh = (h, w) if rotation in (90, 270) else (w, h)  # displayed size
    scale = size / min(dw, dh)
    sw, sh = max(size, round(dw * scale)), max(size, round(dh * scale))
    tw, th = (sh, sw) if rotation in (90, 270) else (sw, sh)
    rgb = frame.reformat(
        width=tw, height=th, format="rgb24", interpolation="AREA", threads=threads
    ).to_ndarray()
    if rotation:
        # FFmpeg's display matrix rotation is counter-clockwise.
        rgb = np.rot90(rgb, k=rotation // 90)
    y0, x0 = (rgb.shape[0] - size) // 2, (rgb.shape[1] - size) // 2
    return np.ascontiguousarray(rgb[y0 : y0 + size, x0 : x0 + size])


def decode_clip(
    path: str | Path, spec: ClipSpec, start: float = 0.0, limits: DecodeLimits = DecodeLimits()
) -> DecodedClip:
    """Decode ``spec.clip_seconds`` from ``start``. Raises ``MediaError`` with a kind:
    ``not_media``, ``no_streams``, ``no_video``, ``image_not_video``, ``too_large``,
    ``too_small``, ``too_few_frames``, ``unsupported_codec``, ``decode_timeout``,
    ``decode_error`` (damaged beyond the usable threshold), ``empty_window`` (nothing
    decodable inside the window). A missing audio track is not an error: the
    waveform is zeros and ``quality.has_audio`` is False."""
    check_local_file(path)  # a FIFO would block the open below past any deadline
    path = Path(path)
    deadline = time.monotonic() + limits.deadline_seconds
    try:
        container = av.open(str(path), metadata_errors="ignore", timeout=limits.deadline_seconds)
    except (av.FFmpegError, OSError, ValueError) as exc:
        if time.monotonic() > deadline:
            raise MediaError(
                "decode_timeout", f"{path.name}: opening took over {limits.deadline_seconds:g} s"
            ) from exc
        raise MediaError("not_media", f"{path.name}: {exc}") from exc
    with container:
        try:
            return _decode(container, path, spec, start, limits, deadline)
        except MediaError:
            raise
        except (av.FFmpegError, ValueError, RuntimeError, MemoryError) as exc:
            if time.monotonic() > deadline:
                raise MediaError(
                    "decode_timeout", f"{path.name}: over {limits.deadline_seconds:g} s"
                ) from exc
            raise MediaError("decode_error", f"{path.name}: {type(exc).__name__}: {exc}") from exc


def _decodable(stream: Stream) -> bool:
    """False for a stream whose codec FFmpeg does not know (no codec context/decoder)."""
    cc = stream.codec_context
    return cc is not None and getattr(cc, "codec", None) is not None


def _packets(
    container: InputContainer, streams: list[Stream], deadline: float, path: Path, limits: DecodeLimits
) -> Iterator[av.Packet[Stream]]:
    """Demux, ending quietly where the demuxer gives up (a truncated or overwritten
    file reads as an early end), and raising ``decode_timeout`` past the deadline."""
    it = container.demux(*streams)
    while True:
        if time.monotonic() > deadline:
            raise MediaError(
                "decode_timeout", f"{path.name}: decoding took over {limits.deadline_seconds:g} s"
            )
        try:
            packet = next(it)
        except StopIteration:
            return
        except (av.EOFError, av.InvalidDataError, OSError) as exc:
            if time.monotonic() > deadline:
                raise MediaError(
                    "decode_timeout", f"{path.name}: reading took over {limits.deadline_seconds:g} s"
                ) from exc
            return
        yield packet


@dataclass(frozen=True, kw_only=True)
class _Streams:
    """The streams one decode reads, with the container facts the checks need."""

    video: av.VideoStream | None
    audio: av.AudioStream | None
    video_undecodable: bool  # a video stream exists but no decoder knows it (label: audio only)
    fmt: str
    is_image: bool
    duration: float | None
    fps: float | None


def _select_streams(container: InputContainer, path: Path, limits: DecodeLimits) -> _Streams:
    """The first video and audio stream, checked against ``limits`` (the errors that
    need no decoding: no streams, a still image, too large or too small), with the
    decoder threads set."""
    vstream = container.streams.video[0] if container.streams.video else None
    astream = container.streams.audio[0] if container.streams.audio else None
    if astream is not None and not _decodable(astream):
        astream = None  # audio no decoder knows: treated like no audio track
    video_undecodable = False
    if vstream is not None and not _decodable(vstream):
        if not (limits.allow_undecodable_video and astream is not None):
            raise MediaError(
                "unsupported_codec", f"{path.name}: FFmpeg has no decoder for the video stream's codec"
            )
        vstream, video_undecodable = None, True
    if vstream is None and astream is None:
        raise MediaError("no_streams", f"{path.name} has no decodable audio or video stream")
    if vstream is None and not limits.allow_missing_video:
        raise MediaError("no_video", f"{path.name} has no video stream (audio only)")
    fmt = container.format.name
    is_image = fmt in _IMAGE_FORMATS or fmt.endswith("_pipe")
    if is_image and not (limits.allow_animated_images and fmt in ("gif", "apng", "webp")):
        raise MediaError("image_not_video", f"{path.name} is a still image ({fmt}), not a video")
    duration = container.duration / av.time_base if container.duration else None
    if duration is not None and duration > limits.max_duration:
        raise MediaError(
            "too_large", f"{path.name}: duration {duration:.0f} s exceeds {limits.max_duration:.0f} s"
        )
    fps = _check_video_stream(vstream, path, limits) if vstream is not None else None
    if astream is not None:
        astream.codec_context.thread_count = limits.threads
    return _Streams(
        video=vstream,
        audio=astream,
        video_undecodable=video_undecodable,
        fmt=fmt,
        is_image=is_image,
        duration=duration,
        fps=fps,
    )


def _check_video_stream(vstream: av.VideoStream, path: Path, limits: DecodeLimits) -> float | None:
    """Size and rate checks; sets the decoder threads. Returns the stream's fps."""
    cc = vstream.codec_context
    if cc.width * cc.height > limits.max_pixels:
        raise MediaError(
            "too_large", f"{path.name}: {cc.width}x{cc.height} exceeds {limits.max_pixels} pixels"
        )
    if min(cc.width, cc.height) < limits.min_side:
        raise MediaError("too_small", f"{path.name}: {cc.width}x{cc.height} is below {limits.min_side} px")
    fps = float(vstream.average_rate) if vstream.average_rate else None
    if fps and fps > limits.max_fps:
        raise MediaError("too_large", f"{path.name}: {fps:.0f} fps exceeds {limits.max_fps:.0f}")
    vstream.thread_type = "AUTO"
    cc.thread_count = limits.threads
    if limits.skip_nonref:
        cc.skip_frame = "NONREF"
    return fps


def _decode(
    container: InputContainer,
    path: Path,
    spec: ClipSpec,
    start: float,
    limits: DecodeLimits,
    deadline: float = math.inf,
) -> DecodedClip:
    """One window of an open container: pick the streams, read the packets once, then
    judge what decoded (see the module docstring)."""
    streams = _select_streams(container, path, limits)
    window = spec.clip_seconds
    if streams.duration is not None:
        if start >= streams.duration:
            raise MediaError(
                "empty_window", f"{path.name}: start {start:.1f} s is past the end ({streams.duration:.1f} s)"
            )
        window = min(window, streams.duration - start)
    end = start + spec.clip_seconds
    if start > 0:
        container.seek(int(start * av.time_base), backward=True, any_frame=False)
    video = (
        _VideoWindow(start, end, frame_times(start, window, spec.num_frames), streams.fps)
        if streams.video is not None
        else None
    )
    audio = _AudioWindow(start, spec)
    corrupt, ended_early = _read(container, streams, video, audio, spec, deadline, path, limits)
    _check_frames(streams, video, corrupt, path, start, end, limits)
    frames = (
        video.frames(spec.frame_size, limits.threads)
        if video is not None
        else np.zeros((spec.num_frames, spec.frame_size, spec.frame_size, 3), np.uint8)
    )
    waveform, got, real = audio.result()
    video_seconds = video.seconds() if video is not None else 0.0
    audio_seconds = real / spec.sample_rate
    if streams.duration is None and ended_early and not corrupt:
        # No stated duration (raw elementary streams) and the stream ended cleanly
        # before the window did: the file is that short, not damaged.
        content_end = max(got / spec.sample_rate, video.content_end() if video is not None else 0.0)
        window = max(min(window, content_end), 1e-3)
    covered = _covered(
        streams, video, audio_seconds, video_seconds, window, corrupt, path, start, end, limits
    )
    quality = _quality(
        streams, video, frames, waveform[:got], start, audio_seconds, video_seconds, covered, window, corrupt
    )
    return DecodedClip(waveform, frames, quality)


class _PacketDecoder:
    """Decodes packets, skipping and counting the ones the decoder rejects."""

    def __init__(self) -> None:
        self.corrupt = 0

    @overload
    def __call__(self, packet: av.Packet[av.VideoStream]) -> list[av.VideoFrame]: ...
    @overload
    def __call__(self, packet: av.Packet[av.AudioStream]) -> list[av.AudioFrame]: ...

    def __call__(
        self, packet: av.Packet[av.VideoStream] | av.Packet[av.AudioStream]
    ) -> list[av.VideoFrame] | list[av.AudioFrame]:
        try:
            return packet.decode()
        except av.FFmpegError:  # a damaged packet (InvalidDataError, …): skip it, count it
            self.corrupt += 1
            return []


def _read(
    container: InputContainer,
    streams: _Streams,
    video: _VideoWindow | None,
    audio: _AudioWindow,
    spec: ClipSpec,
    deadline: float,
    path: Path,
    limits: DecodeLimits,
) -> tuple[int, bool]:
    """One pass over the packets of both streams into the two windows, until both
    are full. Returns (damaged packets, whether a stream ended before its window
    was full)."""
    decode = _PacketDecoder()
    resampler = (
        av.AudioResampler(format="flt", layout="mono", rate=spec.sample_rate)
        if streams.audio is not None
        else None
    )
    need_audio, need_video = streams.audio is not None, streams.video is not None
    for packet in _packets(
        container, [s for s in (streams.video, streams.audio) if s is not None], deadline, path, limits
    ):
        if not (need_audio or need_video):
            break
        if packet.stream is streams.video and need_video:
            assert video is not None  # built exactly when there is a video stream
            before = decode.corrupt
            frames_out = decode(cast("av.Packet[av.VideoStream]", packet))  # its stream is the video one
            if decode.corrupt > before:
                video.damaged()
            for frame in frames_out:
                if not video.take(frame):
                    need_video = False
                    break
        elif packet.stream is streams.audio and need_audio:
            assert resampler is not None  # built exactly when there is an audio stream
            for aframe in decode(cast("av.Packet[av.AudioStream]", packet)):  # its stream is the audio one
                audio.note_input(aframe)
                for out in resampler.resample(aframe):
                    audio.take(out)
                if audio.full:
                    need_audio = False
                    break
    if need_video:  # the demuxer may have stopped early (cut file): drain what the decoder holds
        assert streams.video is not None and video is not None
        try:
            for frame in streams.video.codec_context.decode(None):
                if not video.take(frame):
                    break
        except av.FFmpegError:  # already drained by the demuxer's own flush packet
            pass
    if need_audio and resampler is not None:
        try:
            for out in resampler.resample(None):
                audio.take(out)
        except av.FFmpegError:
            decode.corrupt += 1
    return decode.corrupt, need_audio or need_video


def _check_frames(
    streams: _Streams,
    video: _VideoWindow | None,
    corrupt: int,
    path: Path,
    start: float,
    end: float,
    limits: DecodeLimits,
) -> None:
    """The video errors known once the packets are read: no frame, a still, too few."""
    in_window = video.in_window if video is not None else 0
    if video is not None and not video.has_content:
        if not video.decoded and corrupt:
            raise MediaError(
                "decode_error", f"{path.name}: no video frame decodes ({corrupt} damaged packets)"
            )
        raise MediaError(
            "empty_window", f"{path.name}: no decodable video frame in [{start:.1f}, {end:.1f}) s"
        )
    if streams.is_image and in_window < 2:  # a GIF/APNG/WebP with one frame is a still image
        raise MediaError("image_not_video", f"{path.name} is a still image ({streams.fmt}), not a video")
    if video is not None and in_window < limits.min_frames:
        raise MediaError(
            "too_few_frames", f"{path.name}: {in_window} frame(s) in the window, need {limits.min_frames}"
        )


def _covered(
    streams: _Streams,
    video: _VideoWindow | None,
    audio_seconds: float,
    video_seconds: float,
    window: float,
    corrupt: int,
    path: Path,
    start: float,
    end: float,
    limits: DecodeLimits,
) -> float:
    """Seconds of the window the decoded content covers (the smaller modality);
    ``decode_error``/``empty_window`` below the usable threshold."""
    used = ([audio_seconds] if streams.audio is not None else []) + (
        [video_seconds] if video is not None else []
    )
    if video is not None and video.in_window < 2:
        used[-1] = window  # a single frame (a still or 1 fps clip) stands for the window it spans
    covered = min(min(used), window)
    needed = min(limits.min_content_seconds, 0.5 * window)
    if covered + 1e-6 < needed:
        if corrupt or covered > 0:
            raise MediaError(
                "decode_error",
                f"{path.name}: only {covered:.2f} s of the {window:.2f} s window decode "
                f"(need {needed:.2f} s; {corrupt} damaged packets)",
            )
        raise MediaError("empty_window", f"{path.name}: nothing decodable in [{start:.1f}, {end:.1f}) s")
    return covered


def _quality(
    streams: _Streams,
    video: _VideoWindow | None,
    frames: np.ndarray,
    placed: np.ndarray,
    start: float,
    audio_seconds: float,
    video_seconds: float,
    covered: float,
    window: float,
    corrupt: int,
) -> Quality:
    """The window's :class:`Quality` from what decoded (``placed``: the audio samples
    placed, before the padding)."""
    rms = float(np.sqrt(np.mean(placed**2))) if len(placed) else 0.0
    motion = float(np.abs(np.diff(frames.astype(np.int16), axis=0)).mean()) if len(frames) > 1 else 0.0
    vcc = streams.video.codec_context if streams.video is not None else None
    acc = streams.audio.codec_context if streams.audio is not None else None
    return Quality(
        duration=streams.duration,
        window_start=start,
        audio_seconds=audio_seconds,
        video_seconds=video_seconds,
        has_audio=streams.audio is not None,
        has_video=video is not None,
        audio_rms=rms,
        silent=rms < SILENCE_RMS,
        frozen=video is not None and motion < FROZEN_MOTION,
        frame_motion=motion,
        fps=streams.fps,
        width=vcc.width if vcc else None,
        height=vcc.height if vcc else None,
        rotation=video.rotation if video is not None else 0,
        video_codec=vcc.codec.canonical_name if vcc else None,
        audio_codec=acc.codec.canonical_name if acc else None,
        sample_rate=acc.sample_rate if acc else None,
        channels=acc.channels if acc else None,
        covered_seconds=round(covered, 3),
        partial=covered < 0.9 * window,
        corrupt_packets=corrupt,
        video_undecodable=streams.video_undecodable,
    )


class _VideoWindow:
    """The frames chosen for the window: for each target time the nearest decoded
    frame, from frames seen in decode order. After a damaged packet the frames up to
    the next keyframe are concealment guesses: neither chosen nor counted."""

    def __init__(self, start: float, end: float, targets: np.ndarray, fps: float | None):
        self.start, self.end, self.targets, self.fps = start, end, targets, fps
        self.chosen: list[tuple[float, av.VideoFrame] | None] = [None] * len(targets)
        self.decoded = 0  # frames the decoder gave, any time
        self.in_window = 0  # frames at or after start (and before end)
        self.first: float | None = None  # time of the first and last frame in the window
        self.last: float | None = None
        self.tainted = False

    @property
    def frame_period(self) -> float:
        return 1 / self.fps if self.fps else 0.0

    @property
    def has_content(self) -> bool:
        return any(c is not None for c in self.chosen)

    @property
    def rotation(self) -> int:
        first = self.chosen[0]
        assert first is not None  # read only once has_content holds
        return int(first[1].rotation or 0) % 360

    def damaged(self) -> None:
        """A packet was lost: what follows references it until the next keyframe."""
        self.tainted = True

    def take(self, frame: av.VideoFrame) -> bool:
        """Consider one decoded frame; False once past the window."""
        # Elementary streams (raw .h264) carry no timestamps: count frames instead.
        t = frame.time if frame.time is not None else self.decoded / (self.fps or 25.0)
        self.decoded += 1
        if t >= self.end:
            return False
        if self.tainted and frame.key_frame:
            self.tainted = False
        if self.tainted:
            return True
        # Keep the nearest frame per target; frames before start still count
        # as candidates for the first target (keyframe-aligned seeks).
        for k, target in enumerate(self.targets):
            best = self.chosen[k]
            if best is None or abs(t - target) < abs(best[0] - target):
                self.chosen[k] = (t, frame)
        if t >= self.start:
            self.first = t if self.first is None else self.first
            self.last = t
            self.in_window += 1
        return True

    def seconds(self) -> float:
        """Time the frames in the window cover; a corrupt stretch between the first and
        the last frame is not covered (frames actually decoded)."""
        if self.first is None or self.last is None:  # set together
            return 0.0
        span = self.last - self.first + self.frame_period
        return min(span, self.in_window * self.frame_period) if self.frame_period else span

    def content_end(self) -> float:
        """Seconds from the window start to the end of the last frame (0 without one)."""
        return self.last - self.start + self.frame_period if self.last is not None else 0.0

    def frames(self, size: int, threads: int) -> np.ndarray:
        picked = [c[1] for c in self.chosen if c is not None]
        # The first frame taken fills every target, so once has_content holds none is missing.
        assert len(picked) == len(self.chosen)
        return np.stack([_to_square_rgb(frame, size, threads) for frame in picked])


GAP_SECONDS = 0.05  # a jump in input audio timestamps larger than this is a hole (damage)


class _AudioWindow:
    """The window's waveform assembled from resampled frames. Contiguous while the
    input is; after a hole in the input timestamps (skipped corrupt packets, an
    overwritten stretch) it inserts silence so later audio stays at its own time."""

    def __init__(self, start: float, spec: ClipSpec):
        self.start, self.spec = start, spec
        self.chunks: list[np.ndarray] = []
        self.first: float | None = None
        self.have = 0  # samples placed, gaps included
        self.gaps = 0  # silent samples inserted for holes
        self.next_in: float | None = None  # expected time of the next input frame

    @property
    def full(self) -> bool:
        return self.have >= self.spec.num_samples

    def note_input(self, frame: av.AudioFrame) -> None:
        t = frame.time
        if t is not None and frame.sample_rate:
            if self.next_in is not None and self.first is not None and t - self.next_in > GAP_SECONDS:
                gap = min(
                    round((t - self.next_in) * self.spec.sample_rate), self.spec.num_samples - self.have
                )
                if gap > 0:
                    self.chunks.append(np.zeros(gap, np.float32))
                    self.have += gap
                    self.gaps += gap
            self.next_in = t + frame.samples / frame.sample_rate

    def take(self, frame: av.AudioFrame) -> None:
        self.first, self.have = _take_audio(frame, self.start, self.spec, self.chunks, self.first, self.have)

    def result(self) -> tuple[np.ndarray, int, int]:
        """(waveform, samples placed, real samples) — padding after ``placed`` is zeros."""
        waveform = np.zeros(self.spec.num_samples, np.float32)
        got = min(self.have, self.spec.num_samples)
        if self.chunks:
            waveform[:got] = np.clip(np.concatenate(self.chunks)[:got], -1.0, 1.0)
        return waveform, got, max(0, got - self.gaps)


def _take_audio(
    frame: av.AudioFrame,
    start: float,
    spec: ClipSpec,
    chunks: list[np.ndarray],
    first: float | None,
    have: int,
) -> tuple[float | None, int]:
    """Append the part of a resampled frame at or after ``start`` (the seek lands on
    an earlier packet); returns updated (first sample time, samples held)."""
    data = frame.to_ndarray().reshape(-1)
    t = (
        frame.time
        if frame.time is not None
        else (first if first is not None else start) + have / spec.sample_rate
    )
    if first is None:
        skip = max(0, math.floor((start - t) * spec.sample_rate + 0.5))
        if skip >= len(data):
            return None, have
        data = data[skip:]
        first = t + skip / spec.sample_rate
    chunks.append(data)
    return first, have + len(data)
