"""Download only a clip's section with yt-dlp's Python API.

yt-dlp hands section downloads to ffmpeg, which reads just the byte ranges it needs
(the server must honour HTTP Range). ffmpeg comes from PATH, from
``DownloadConfig.ffmpeg``, or from the ``imageio-ffmpeg`` wheel (linked as
``ffmpeg`` in a private directory, since yt-dlp looks for that name).

Errors are classified from yt-dlp's messages into permanent kinds (the clip will
not come back by retrying: unavailable, private, removed, 404, geo, age, bot check)
and transient ones (429, 5xx, timeouts, resets, truncated transfers). Transient
errors are retried here with exponential backoff and jitter; yt-dlp's own retries
are kept low so this loop is the one in control and ``attempts`` is honest.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avfusion.config import ClipSpec
from avfusion.sources import ClipTask


@dataclass(frozen=True)
class DownloadConfig:
    """Options users pass through to yt-dlp, and our retry policy."""

    url_template: str = "https://www.youtube.com/watch?v={id}"
    # Lowest format that still gives the frames we keep: ≤360p video + audio.
    format: str = "bv*[height<=360][height>=224]+ba/b[height<=360][height>=224]/wv*+ba/w/b"
    cookies: str | None = None  # cookies.txt path (YouTube's bot check needs one for bulk runs)
    proxy: str | None = None
    rate_limit: str | None = None  # bytes/s, e.g. "2M"
    sleep_seconds: float = 0.0  # pause before each request, to stay under rate limits
    socket_timeout: float = 30.0
    max_attempts: int = 4
    backoff_base: float = 2.0
    backoff_max: float = 60.0
    ffmpeg: str | None = None  # path to an ffmpeg binary; default PATH, then imageio-ffmpeg
    extra: dict[str, Any] = field(default_factory=dict)  # any other yt-dlp option, verbatim


class DownloadError(Exception):
    def __init__(self, kind: str, transient: bool, message: str, attempts: int):
        super().__init__(f"{kind}: {message}")
        self.kind, self.transient, self.message, self.attempts = kind, transient, message, attempts


# (kind, transient, pattern) — first match wins; checked against yt-dlp's message.
_RULES: list[tuple[str, bool, re.Pattern]] = [
    (kind, transient, re.compile(pattern, re.I))
    for kind, transient, pattern in [
        # The age gate also says "Sign in to confirm …": it must match before the bot check.
        ("age_restricted", False, r"confirm your age|age.restricted|inappropriate for some users"),
        ("bot_check", False, r"confirm you.?re not a bot|sign in to confirm"),
        ("private", False, r"private video|video is private"),
        ("geo_blocked", False, r"not (?:made this video )?available in your country|geo.?restrict"),
        ("removed", False, r"has been removed|account .* terminated|no longer available|copyright claim"),
        ("unavailable", False, r"video unavailable|this video is not available|members.only|premieres in"),
        # On HTTP status, never a bare number: ids and ports in messages contain digits.
        ("not_found", False, r"HTTP Error (?:404|410)|not found"),
        ("forbidden", False, r"HTTP Error 403|forbidden"),
        ("rate_limited", True, r"HTTP Error 429|too many requests"),
        ("server_error", True, r"HTTP Error 5\d\d|internal server error|bad gateway|service unavailable"),
        ("timeout", True, r"timed? ?out|timeout"),
        ("connection", True, r"connection (?:reset|refused|aborted)|remote end closed|broken pipe|"
                              r"temporary failure in name resolution|network is unreachable|eof occurred"),
        # yt-dlp runs ffmpeg quietly, so its exit code (an AVERROR masked to 8 bits) is all
        # we learn: 8 HTTP error, 146 timed out, 152 reset, 183 invalid data, 187 end of
        # file. 183 means a cut transfer as often as a file that is not media, so it stays
        # transient (bounded retries) rather than risk abandoning a recoverable clip.
        ("server_error", True, r"ffmpeg exited with code 8\b"),
        ("timeout", True, r"ffmpeg exited with code 146\b"),
        ("connection", True, r"ffmpeg exited with code 152\b"),
        ("truncated", True, r"ffmpeg exited with code (?:187|183) \(partial"),
        ("stream_error", True, r"ffmpeg exited with code"),
        ("truncated", True, r"incomplete ?read|truncat|partial|premature|invalid data found|moov atom not found|"
                             r"end of file|content-length"),
        ("no_format", False, r"requested format is not available|no video formats found"),
        ("unsupported_url", False, r"unsupported url"),
    ]
]


def classify(message: str) -> tuple[str, bool]:
    """yt-dlp/ffmpeg message → (kind, transient). Unknown messages are transient
    ``download_error`` so ``--retry-failed`` gives them another chance."""
    for kind, transient, pattern in _RULES:
        if pattern.search(message):
            return kind, transient
    return "download_error", True


_FFMPEG_DIR: str | None = None


def ffmpeg_location(configured: str | None = None) -> str:
    """A directory holding an executable named ``ffmpeg`` for yt-dlp, also put on this
    process's PATH: yt-dlp decides whether a section download is possible with a PATH
    lookup (``FFmpegFD.available()``) that ignores ``ffmpeg_location``."""
    global _FFMPEG_DIR
    if configured:
        directory = configured if os.path.isdir(configured) else str(Path(configured).parent)
    elif shutil.which("ffmpeg"):
        return str(Path(shutil.which("ffmpeg")).parent)
    else:
        if _FFMPEG_DIR is None or not Path(_FFMPEG_DIR, "ffmpeg").exists():
            import imageio_ffmpeg

            link_dir = tempfile.mkdtemp(prefix="avfusion-ffmpeg-")
            os.symlink(imageio_ffmpeg.get_ffmpeg_exe(), Path(link_dir, "ffmpeg"))
            _FFMPEG_DIR = link_dir
        directory = _FFMPEG_DIR
    if directory not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = directory + os.pathsep + os.environ.get("PATH", "")
    return directory


class _QuietLogger:
    """yt-dlp prints errors to stderr even when quiet; ours go to the failure record."""

    def debug(self, msg: str) -> None:
        pass

    info = warning = debug

    def error(self, msg: str) -> None:
        pass


def ydl_options(cfg: DownloadConfig, start: float, end: float, workdir: Path) -> dict[str, Any]:
    from yt_dlp.utils import download_range_func

    opts: dict[str, Any] = {
        "format": cfg.format,
        # Always mp4: its edit list hides the stream-copy pre-roll before the cut; mkv/webm
        # output would start at the previous keyframe (the wrong window). A fixed name
        # also avoids yt-dlp's "unknown format" path for extension-less URLs.
        "outtmpl": str(workdir / "clip.mp4"),
        "download_ranges": download_range_func(None, [(start, end)]),
        "force_keyframes_at_cuts": False,  # we decode the window ourselves; no re-encode
        "ffmpeg_location": ffmpeg_location(cfg.ffmpeg),
        "socket_timeout": cfg.socket_timeout,
        "retries": 0,
        "fragment_retries": 0,
        "extractor_retries": 0,
        "quiet": True,
        "no_warnings": True,
        "logger": _QuietLogger(),
        "noprogress": True,
        "noplaylist": True,
        "overwrites": True,
        "cachedir": False,
        "merge_output_format": "mp4",
        "external_downloader_args": {
            # -rw_timeout: a stalled transfer fails instead of hanging; -xerror: a cut
            # transfer fails instead of "succeeding" with a short clip.
            "ffmpeg_i": ["-rw_timeout", str(int(cfg.socket_timeout * 1e6)), "-xerror"],
            "ffmpeg_o": ["-f", "mp4"],
        },
        "file_access_retries": 0,
    }
    if cfg.cookies:
        opts["cookiefile"] = cfg.cookies
    if cfg.proxy:
        opts["proxy"] = cfg.proxy
    if cfg.rate_limit:
        from yt_dlp.utils import parse_bytes

        opts["ratelimit"] = parse_bytes(cfg.rate_limit)
    if cfg.sleep_seconds:
        opts["sleep_interval_requests"] = cfg.sleep_seconds
    opts.update(cfg.extra)
    return opts


def _attempt(url: str, opts: dict[str, Any], workdir: Path) -> Path:
    import yt_dlp

    for leftover in workdir.iterdir():
        leftover.unlink()
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            ydl.download([url])
    except yt_dlp.utils.YoutubeDLError as exc:
        partial = any(p.name.endswith(".part") for p in workdir.iterdir())
        raise _Failed(f"{exc}{' (partial file left)' if partial else ''}") from exc
    outputs = [p for p in workdir.iterdir() if p.is_file() and not p.name.endswith((".part", ".ytdl", ".temp"))]
    if not outputs:
        raise _Failed("yt-dlp reported success but wrote no file (partial download)")
    if outputs[0].stat().st_size == 0:
        raise _Failed("yt-dlp wrote an empty file (truncated download)")
    return outputs[0]


class _Failed(Exception):
    pass


def download_section(task: ClipTask, clip: ClipSpec, cfg: DownloadConfig, workdir: Path,
                     sleep=time.sleep) -> tuple[Path, int]:
    """Fetch ``[task.start, task.end or start + clip_seconds]`` of ``task.source`` into
    ``workdir``. Returns (file, attempts); raises ``DownloadError`` when the error is
    permanent or transient attempts run out."""
    end = task.end if task.end is not None else task.start + clip.clip_seconds
    opts = ydl_options(cfg, task.start, end, workdir)
    for attempt in range(1, cfg.max_attempts + 1):
        try:
            return _attempt(task.source, opts, workdir), attempt
        except _Failed as exc:
            message = _clean(str(exc))
            kind, transient = classify(message)
            if not transient or attempt == cfg.max_attempts:
                raise DownloadError(kind, transient, message, attempt) from None
            delay = min(cfg.backoff_max, cfg.backoff_base * 2 ** (attempt - 1))
            sleep(delay * random.uniform(0.5, 1.0))  # full jitter keeps retries apart
    raise AssertionError("unreachable")


def _clean(message: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", message).replace("ERROR: ", "").strip()[:2000]
