"""Cheap facts about a media file (container, streams, duration) without decoding.

Shared by preprocess (quality signals, caps on pathological inputs) and label
(the Parquet row's container/codec columns).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import av


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

    def to_dict(self) -> dict:
        return asdict(self)


def probe(path: str | Path) -> MediaInfo:
    """Open the container and read stream headers; raises ``MediaError`` on a file
    that is not media (``not_media``) or has neither audio nor video (``no_streams``)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with av.open(str(path), metadata_errors="ignore") as container:
            video = container.streams.video[0] if container.streams.video else None
            audio = container.streams.audio[0] if container.streams.audio else None
            if video is None and audio is None:
                raise MediaError("no_streams", f"{path.name} has no audio or video stream")
            duration = container.duration / av.time_base if container.duration else None
            return MediaInfo(
                path=str(path),
                size_bytes=size,
                container=container.format.name,
                duration=duration,
                video_codec=video.codec_context.codec.canonical_name if video else None,
                width=video.codec_context.width if video else None,
                height=video.codec_context.height if video else None,
                fps=float(video.average_rate) if video and video.average_rate else None,
                audio_codec=audio.codec_context.codec.canonical_name if audio else None,
                sample_rate=audio.codec_context.sample_rate if audio else None,
                channels=audio.codec_context.channels if audio else None,
            )
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise MediaError("not_media", f"{path.name}: {exc}") from exc
