"""Cheap facts about a media file (container, streams, duration) without decoding.

Shared by preprocess (quality signals, caps on pathological inputs) and label
(the Parquet row's container/codec columns).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
from av.stream import Stream

from avfusion import storage


class MediaError(Exception):
    """A file that cannot be used, with a stable ``kind`` for failure tables."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class MediaInfo:
    path: str
    size_bytes: int
    container: str
    duration: float | None
    video_codec: str | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    audio_codec: str | None = None
    sample_rate: int | None = None
    channels: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# What a path that is not a readable regular file is, by ``storage.local_kind``: the
# failure kind and what the message says.
_NOT_A_FILE = {
    "dir": ("not_a_file", "is a directory"),
    "fifo": ("not_a_file", "is a FIFO (named pipe), not a regular file"),
    "socket": ("not_a_file", "is a socket, not a regular file"),
    "device": ("not_a_file", "is a device, not a regular file"),
    "missing": ("missing_file", "does not exist (dangling link?)"),
    "too_long": ("path_too_long", "has a path longer than the OS can open"),
    "loop": ("symlink_loop", "is a symlink loop"),
    "unreadable": ("unreadable", "cannot be read: permission denied"),
    "error": ("read_error", "cannot be read: the OS reports an I/O error"),
}


def check_local_file(path: str | Path) -> None:
    """Raise ``MediaError`` for a local path that is not a readable regular file,
    deciding by ``stat`` alone, before anything opens it: opening a FIFO blocks until
    a writer comes, which no deadline inside the decoder can interrupt. Kinds:
    ``not_a_file`` (directory, FIFO, socket, device), ``missing_file``,
    ``path_too_long``, ``symlink_loop``, ``unreadable``, ``read_error``. (A file
    swapped for a FIFO between this check and the open is not covered.)"""
    kind = storage.local_kind(str(path))
    if kind != "file":
        error, what = _NOT_A_FILE.get(kind, ("read_error", f"is not a regular file ({kind})"))
        raise MediaError(error, f"{_name(path)} {what}")


def _name(path: str | Path) -> str:
    """A path's file name as UTF-8 text (``\\xNN`` for bytes that are not) for messages."""
    return os.fsencode(Path(path).name).decode("utf-8", "backslashreplace")


def probe(path: str | Path, timeout: float | None = None) -> MediaInfo:
    """Open the container and read stream headers; raises ``MediaError`` on a path
    that is not a readable file (see :func:`check_local_file`), a file that is not
    media (``not_media``) or has neither audio nor video (``no_streams``). ``timeout``
    (seconds) bounds FFmpeg's blocking reads, as a decode's deadline does."""
    check_local_file(path)
    path = Path(path)
    try:
        size = path.stat().st_size
        with av.open(str(path), metadata_errors="ignore", timeout=timeout) as container:
            video = container.streams.video[0] if container.streams.video else None
            audio = container.streams.audio[0] if container.streams.audio else None
            if video is None and audio is None:
                raise MediaError("no_streams", f"{_name(path)} has no audio or video stream")
            duration = container.duration / av.time_base if container.duration else None
            vcc = video.codec_context if video else None  # None: a codec FFmpeg does not know
            acc = audio.codec_context if audio else None
            return MediaInfo(
                path=str(path),
                size_bytes=size,
                container=container.format.name,
                duration=duration,
                video_codec=_codec_name(video),
                width=vcc.width if vcc else None,
                height=vcc.height if vcc else None,
                fps=float(video.average_rate) if video and video.average_rate else None,
                audio_codec=_codec_name(audio),
                sample_rate=acc.sample_rate if acc else None,
                channels=acc.channels if acc else None,
            )
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError("not_media", f"{_name(path)}: {exc}") from exc


UNKNOWN_CODEC = "unknown"


def _codec_name(stream: Stream | None) -> str | None:
    """The stream's codec name; ``"unknown"`` for a stream whose codec FFmpeg cannot
    identify (no codec context), so a probe never fails on what decode may skip."""
    if stream is None:
        return None
    cc = stream.codec_context
    codec = getattr(cc, "codec", None) if cc is not None else None
    return codec.canonical_name if codec is not None else UNKNOWN_CODEC
