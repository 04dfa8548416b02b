"""Download only a clip's section with yt-dlp's Python API.

yt-dlp hands section downloads to ffmpeg, which reads just the byte ranges it needs
(the server must honour HTTP Range). ffmpeg comes from ``DownloadConfig.ffmpeg``,
PATH, or the ``imageio-ffmpeg`` wheel, and is handed to yt-dlp explicitly.

Errors are classified from yt-dlp's messages into permanent kinds (the clip will
not come back by retrying: unavailable, private, removed, 404, geo, age gate),
blocks of the source (bot check, session block, 429, media-host 403: transient,
reported to the governor, never held against the clip) and other transient ones
(5xx, timeouts, resets, truncated transfers). Transient errors are retried here
with exponential backoff and jitter; yt-dlp's own retries are kept low so this loop
is the one in control and ``attempts`` is honest.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from avfusion.config import ClipSpec, bounded, check_bounds
from avfusion.sources import ClipTask

if TYPE_CHECKING:
    from avfusion.governor import GovernorClient


@dataclass(frozen=True)
class DownloadConfig:
    """Options users pass through to yt-dlp, and our retry policy."""

    url_template: str = "https://www.youtube.com/watch?v={id}"
    # Lowest format that still gives the frames we keep: ≤360p video + audio.
    format: str = "bv*[height<=360][height>=224]+ba/b[height<=360][height>=224]/wv*+ba/w/b"
    cookies: str | None = None  # cookies.txt path (YouTube's bot check needs one for bulk runs)
    proxy: str | None = None
    rate_limit: str | None = None  # bytes/s, e.g. "2M"
    sleep_seconds: float = bounded(0.0, ge=0, le=3600)  # pause before each request (rate limits)
    socket_timeout: float = bounded(30.0, gt=0, le=3600)
    max_attempts: int = bounded(4, ge=1, le=100)
    backoff_base: float = bounded(2.0, ge=0, le=3600)
    backoff_max: float = bounded(60.0, ge=0, le=86400)
    ffmpeg: str | None = None  # path to an ffmpeg binary; default PATH, then imageio-ffmpeg
    request_size: int | None = bounded(None, ge=1, le=1 << 30)  # ffmpeg -request_size (None: its default)
    js_runtimes: dict[str, dict] | None = None  # yt-dlp's js_runtimes; None: its default (deno)
    extra: dict[str, Any] = field(default_factory=dict)  # any other yt-dlp option, verbatim

    def __post_init__(self) -> None:
        check_bounds(self, "download")


class DownloadError(Exception):
    def __init__(
        self, kind: str, transient: bool, message: str, attempts: int, warnings: list[str] | None = None
    ) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind, self.transient, self.message, self.attempts = kind, transient, message, attempts
        self.warnings = warnings or []


class Downloaded(NamedTuple):
    path: Path
    attempts: int
    warnings: list[str]  # yt-dlp's warnings (missing JS runtime, PO token, …), deduplicated


# (kind, transient, pattern) — first match wins; checked against yt-dlp's message.
# Blocks (``governor.BLOCK_KINDS``) are of the IP, session or account, never of the
# clip: transient, named after the block, and signalled to the governor. The strings
# are yt-dlp's (extractor/youtube/_video.py) and YouTube's own reasons.
_RULES: list[tuple[str, bool, re.Pattern]] = [
    (kind, transient, re.compile(pattern, re.I))
    for kind, transient, pattern in [
        # The age gate also says "Sign in to confirm …": it must match before the bot check.
        ("age_restricted", False, r"confirm your age|age.restricted|inappropriate for some users"),
        ("blocked_bot_check", True, r"confirm you.?re not a bot|sign in to confirm|captcha challenge"),
        # "This content isn't available, try again later. The current session has been
        # rate-limited by YouTube for up to an hour" — before the 429 rule ("rate-limited").
        (
            "blocked_session",
            True,
            r"content isn.?t available, try again later|"
            r"has been rate.limited by youtube",
        ),
        ("private", False, r"private video|video is private"),
        ("geo_blocked", False, r"not (?:made this video )?available in your country|geo.?restrict"),
        ("removed", False, r"has been removed|account .* terminated|no longer available|copyright claim"),
        ("unavailable", False, r"video unavailable|this video is not available|members.only|premieres in"),
        # On HTTP status, never a bare number: ids and ports in messages contain digits.
        ("not_found", False, r"HTTP Error (?:404|410)|not found"),
        # A 403 from the media host is most often a missing PO token (yt-dlp's
        # PO-Token-Guide) or a blocked address: the source, not the clip.
        ("blocked_forbidden", True, r"HTTP Error 403|forbidden|po.?token"),
        ("blocked_rate_limit", True, r"HTTP Error 429|too many requests"),
        ("server_error", True, r"HTTP Error 5\d\d|internal server error|bad gateway|service unavailable"),
        ("timeout", True, r"timed? ?out|timeout"),
        (
            "connection",
            True,
            r"connection (?:reset|refused|aborted)|remote end closed|broken pipe|"
            r"temporary failure in name resolution|network is unreachable|eof occurred",
        ),
        # Our side: a cookie file on a read-only mount, a full disk (yt-dlp raises OSError).
        ("local_io_error", True, r"read-only file system|no space left|permission denied|disk quota"),
        # yt-dlp runs ffmpeg quietly, so its exit code (an AVERROR masked to 8 bits) is all
        # we learn: 8 HTTP error, 146 timed out, 152 reset, 183 invalid data, 187 end of
        # file. 183 means a cut transfer as often as a file that is not media, so it stays
        # transient (bounded retries) rather than risk abandoning a recoverable clip.
        ("server_error", True, r"ffmpeg exited with code 8\b"),
        ("timeout", True, r"ffmpeg exited with code 146\b"),
        ("connection", True, r"ffmpeg exited with code 152\b"),
        ("truncated", True, r"ffmpeg exited with code (?:187|183) \(partial"),
        ("stream_error", True, r"ffmpeg exited with code"),
        (
            "truncated",
            True,
            r"incomplete ?read|truncat|partial|premature|invalid data found|"
            r"moov atom not found|end of file|content-length",
        ),
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


def ffmpeg_executable(configured: str | None = None) -> str:
    """The ffmpeg binary for section downloads: ``configured`` (a file, or a directory
    holding ``ffmpeg``), else ffmpeg on PATH, else the ``imageio-ffmpeg`` wheel's. The
    process's PATH is left alone; ``_attempt`` hands the path to yt-dlp explicitly
    (its ``ffmpeg_location`` option, and ``ffmpeg_for_sections``)."""
    if configured:
        return str(Path(configured, "ffmpeg")) if os.path.isdir(configured) else configured
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@contextlib.contextmanager
def ffmpeg_for_sections(exe: str) -> Iterator[None]:
    """Inside the block (this thread's context only), yt-dlp's section downloader uses
    ``exe``. yt-dlp chooses it with ``FFmpegFD.available()``, which ignores the
    ``ffmpeg_location`` option and looks for ffmpeg on PATH (yt-dlp issue 2191); its own
    command line sets this context variable for that, and yt-dlp 2026.10.26 offers no
    public way to. The one place this module reaches past yt-dlp's public interface."""
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor

    token = FFmpegPostProcessor._ffmpeg_location.set(exe)
    try:
        yield
    finally:
        FFmpegPostProcessor._ffmpeg_location.reset(token)


def sections_use_ffmpeg(exe: str) -> bool:
    """Whether yt-dlp hands section downloads to ``exe`` (its own check, as ``_attempt`` runs it)."""
    from yt_dlp.downloader.external import FFmpegFD

    with ffmpeg_for_sections(exe):
        return bool(FFmpegFD.available())


class _RecordingLogger:
    """yt-dlp prints errors to stderr even when quiet; errors reach us as exceptions and
    go to the failure record, warnings are kept (deduplicated) for the record/stats."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def debug(self, msg: str) -> None:
        pass

    info = error = debug

    def warning(self, msg: str) -> None:
        msg = _clean(msg.replace("WARNING: ", "", 1))[:500]
        if msg not in self.warnings:
            self.warnings.append(msg)


def preflight(cfg: DownloadConfig) -> list[str]:
    """Options that would silently not take effect on section downloads (ffmpeg does
    the transfer): each a one-line error with what to use instead."""
    errors = []
    if cfg.proxy and not re.match(r"https?://", cfg.proxy) and "://" in cfg.proxy:
        errors.append(
            f"proxy {cfg.proxy.split('://')[0]}:// is not handed to ffmpeg by yt-dlp, so the media "
            "bytes would bypass it; use an http:// or https:// proxy (e.g. privoxy or gost in "
            "front of the SOCKS one)"
        )
    if cfg.rate_limit:
        errors.append(
            "--rate-limit has no effect: yt-dlp's ratelimit is ignored by ffmpeg, which does every "
            "section download; limit downloads with --downloads-per-hour and --min-spacing instead"
        )
    return errors


def ydl_options(cfg: DownloadConfig, start: float, end: float, workdir: Path) -> dict[str, Any]:
    from yt_dlp.utils import download_range_func

    ffmpeg_i = ["-rw_timeout", str(int(cfg.socket_timeout * 1e6)), "-xerror"]
    if cfg.request_size:
        ffmpeg_i += ["-request_size", str(cfg.request_size)]
    opts: dict[str, Any] = {
        "format": cfg.format,
        # Always mp4: its edit list hides the stream-copy pre-roll before the cut; mkv/webm
        # output would start at the previous keyframe (the wrong window). A fixed name
        # also avoids yt-dlp's "unknown format" path for extension-less URLs.
        "outtmpl": str(workdir / "clip.mp4"),
        "download_ranges": download_range_func(None, [(start, end)]),
        "force_keyframes_at_cuts": False,  # we decode the window ourselves; no re-encode
        "ffmpeg_location": ffmpeg_executable(cfg.ffmpeg),
        "socket_timeout": cfg.socket_timeout,
        "retries": 0,
        "fragment_retries": 0,
        "extractor_retries": 0,
        "quiet": True,
        "noprogress": True,
        "noplaylist": True,
        "overwrites": True,
        "cachedir": False,
        "merge_output_format": "mp4",
        "external_downloader_args": {
            # -rw_timeout: a stalled transfer fails instead of hanging; -xerror: a cut
            # transfer fails instead of "succeeding" with a short clip; -request_size:
            # fewer, larger Range requests (long sources crawl otherwise, yt-dlp 17612).
            "ffmpeg_i": ffmpeg_i,
            "ffmpeg_o": ["-f", "mp4"],
        },
        "file_access_retries": 0,
    }
    if cfg.js_runtimes is not None:
        opts["js_runtimes"] = cfg.js_runtimes
    if cfg.cookies:
        opts["cookiefile"] = cfg.cookies  # replaced by a private copy per attempt
    if cfg.proxy:
        opts["proxy"] = cfg.proxy
    if cfg.sleep_seconds:
        opts["sleep_interval_requests"] = cfg.sleep_seconds
    opts.update(cfg.extra)
    return opts


def _attempt(url: str, opts: dict[str, Any], workdir: Path, logger: _RecordingLogger) -> Path:
    """One yt-dlp run. Its cookie jar is a private copy made here (yt-dlp rewrites the
    cookie file when a ``YoutubeDL`` closes: the user's file may be a read-only Secret
    mount, and threads must not write one file at once); the copy is removed after."""
    import yt_dlp

    from avfusion import storage

    for leftover in workdir.iterdir():
        storage.remove(str(leftover))
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(ffmpeg_for_sections(opts["ffmpeg_location"]))
            opts = {**opts, "logger": logger}
            if opts.get("cookiefile"):
                cookies = storage.private_copy(opts["cookiefile"], "cookies.txt")
                opts["cookiefile"] = stack.enter_context(cookies)
            with yt_dlp.YoutubeDL(opts) as ydl:
                ydl.download([url])
    except (yt_dlp.utils.YoutubeDLError, OSError) as exc:
        partial = any(p.name.endswith(".part") for p in workdir.iterdir())
        name = "" if isinstance(exc, yt_dlp.utils.YoutubeDLError) else f"{type(exc).__name__}: "
        raise _Failed(f"{name}{exc}{' (partial file left)' if partial else ''}") from exc
    unfinished = (".part", ".ytdl", ".temp")
    outputs = [p for p in workdir.iterdir() if p.is_file() and not p.name.endswith(unfinished)]
    if not outputs:
        raise _Failed("yt-dlp reported success but wrote no file (partial download)")
    if outputs[0].stat().st_size == 0:
        raise _Failed("yt-dlp wrote an empty file (truncated download)")
    if not _has_packets(outputs[0]):
        # ffmpeg answered by a 429/403 after its first read exits 0 with stream headers
        # and no packets: the transfer was cut, the clip is not at fault.
        raise _Failed("yt-dlp wrote a file without media packets (truncated download)")
    return outputs[0]


def _has_packets(path: Path) -> bool:
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            return any(s.frames > 0 for s in container.streams if s.type in ("audio", "video"))
    except av.FFmpegError:
        return True  # not media at all: decode classifies it (not_media)


class _Failed(Exception):
    pass


def download_section(
    task: ClipTask,
    clip: ClipSpec,
    cfg: DownloadConfig,
    workdir: Path,
    sleep: Callable[[float], None] = time.sleep,
    governor: GovernorClient | None = None,
    node: str = "local",
) -> Downloaded:
    """Fetch ``[task.start, task.end or start + clip_seconds]`` of ``task.source`` into
    ``workdir``. Raises ``DownloadError`` when the error is permanent or transient
    attempts run out. With a ``governor`` (``avfusion.governor``) every attempt waits
    for its turn and reports its outcome; ``SourceBlocked`` passes through."""
    from avfusion.governor import BLOCK_KINDS, wait_for_turn

    end = task.end if task.end is not None else task.start + clip.clip_seconds
    opts = ydl_options(cfg, task.start, end, workdir)
    logger = _RecordingLogger()
    for attempt in range(1, cfg.max_attempts + 1):
        if governor is not None:
            wait_for_turn(governor, node, sleep)
        try:
            path = _attempt(task.source, opts, workdir, logger)
        except _Failed as exc:
            message = _clean(str(exc))
            kind, transient = classify(message)
            if governor is not None:
                governor.report(node, kind)
            if not transient or attempt == cfg.max_attempts:
                raise DownloadError(kind, transient, message, attempt, logger.warnings) from None
            if governor is None or kind not in BLOCK_KINDS:  # a block's wait is the governor's
                delay = min(cfg.backoff_max, cfg.backoff_base * 2 ** (attempt - 1))
                sleep(delay * random.uniform(0.5, 1.0))  # full jitter keeps retries apart
            continue
        if governor is not None:
            governor.report(node, None)
        return Downloaded(path, attempt, logger.warnings)
    raise AssertionError("unreachable")


def _clean(message: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", message).replace("ERROR: ", "").strip()[:2000]


def js_runtime_report(js_runtimes: dict | None = None) -> dict[str, Any]:
    """Which JS runtime and challenge-solver scripts yt-dlp will use, by yt-dlp's own
    checks: each runtime its ``js_runtimes`` option enables (default: deno), probed by
    the class yt-dlp registers for it (``yt_dlp.globals.supported_js_runtimes``, its
    ``info``), and where the EJS scripts come from (the ``yt-dlp-ejs`` package, else the
    copy yt-dlp's own distribution ships). ``runtime`` (``name version``), ``path``,
    ``supported``, ``solver`` and ``ok`` (both usable: YouTube's challenges can be solved)."""
    import yt_dlp
    from yt_dlp.globals import supported_js_runtimes

    params: dict[str, Any] = {"quiet": True, "logger": _RecordingLogger()}
    if js_runtimes is not None:
        params["js_runtimes"] = js_runtimes
    with yt_dlp.YoutubeDL(params) as ydl:
        enabled = dict(ydl.params.get("js_runtimes") or {})
    infos = []
    for name, config in enabled.items():
        runtime = supported_js_runtimes.value.get(name)
        infos.append((name, runtime(path=config.get("path")).info if runtime else None))
    usable = [(name, info) for name, info in infos if info is not None]
    best = next((x for x in usable if x[1].supported), usable[0] if usable else None)
    solver = _solver_scripts()
    return {
        "runtime": f"{best[0]} {best[1].version}" if best else None,
        "path": best[1].path if best else None,
        "supported": bool(best and best[1].supported),
        "enabled": [name for name, _ in infos],
        "solver": solver,
        "yt_dlp": yt_dlp.version.__version__,
        "ok": bool(best and best[1].supported and solver),
    }


def _solver_scripts() -> str | None:
    """Where yt-dlp's challenge-solver scripts come from, by the installed distributions."""
    from importlib import metadata

    try:
        return f"yt-dlp-ejs {metadata.version('yt-dlp-ejs')} (python package)"
    except metadata.PackageNotFoundError:
        pass
    if any(f.name == "yt.solver.core.js" for f in metadata.files("yt-dlp") or []):
        return "scripts bundled with yt-dlp"
    return None
