"""Download only a clip's section with yt-dlp's Python API.

yt-dlp hands section downloads to ffmpeg, which reads just the byte ranges it needs
(the server must honour HTTP Range). ffmpeg comes from ``DownloadConfig.ffmpeg``,
PATH, or the ``imageio-ffmpeg`` wheel, and is handed to yt-dlp explicitly.

Errors are classified from yt-dlp's messages into permanent kinds (the clip will
not come back by retrying: unavailable, private, removed, 404, geo, age gate),
blocks of the source (bot check, session block, 429, media-host 403, "your IP is
likely being blocked": transient, reported to the governor, never held against the
clip), suspects (answers a blocked source gets as often as a broken clip: transient,
a streak across clips is a block) and other transient ones (5xx, timeouts, resets,
truncated transfers). YouTube rejecting the account's cookies stops the job. Transient
errors are retried here with exponential backoff and jitter; yt-dlp's own retries are
kept low so this loop is the one in control. An attempt (what ``attempts`` counts) is
one extraction and up to 1 + ``transfer_retries`` transfers of what it extracted: a
fault of the transfer does not cost a new extraction. A proxy's own refusal is
``proxy_error`` (transient, never a block), told apart from the origin's by the tools'
wording and, where that is ambiguous, by asking the proxy (``proxy_refusal``).

Hostile settings: ``DownloadConfig.extra`` passes only allow-listed yt-dlp options;
every message kept (failures, warnings) passes ``avfusion.redact``; the cookies file is
sanitised per attempt, and with cookies the media goes through a loopback relay
(``_MediaRelay``) so no cookie value is ever on a command line.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib.util
import io
import math
import os
import random
import re
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from avfusion import cookiejar
from avfusion.config import ClipSpec, bounded, check_bounds
from avfusion.redact import Redactor, cookie_values, redact_patterns
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
    proxy: str | None = None  # one proxy; ``proxies`` for a pool (give one of the two)
    # A pool of egress addresses: each proxy has its own budget and block state in the
    # governor, and every attempt goes through the one the governor grants.
    proxies: tuple[str, ...] = ()
    # The governor's name for this node's own address when no proxy is given (default:
    # the node's IP); nodes behind one NAT share it, so they share one budget.
    egress_id: str | None = None
    rate_limit: str | None = None  # bytes/s, e.g. "2M"
    sleep_seconds: float = bounded(0.0, ge=0, le=3600)  # pause before each request (rate limits)
    socket_timeout: float = bounded(30.0, ge=0.1, le=3600)
    max_attempts: int = bounded(4, ge=1, le=100)
    # A transfer cut by the network or a 5xx is retried this many times with the formats
    # already extracted, before an attempt ends (and the next one extracts again).
    transfer_retries: int = bounded(2, ge=0, le=100)
    backoff_base: float = bounded(2.0, ge=0, le=3600)
    backoff_max: float = bounded(60.0, ge=0, le=86400)
    ffmpeg: str | None = None  # path to an ffmpeg binary; default PATH, then imageio-ffmpeg
    # Bounded Range requests, so a closed transfer leaves at most one request's bytes in
    # flight and no open-ended range for YouTube to throttle (yt-dlp 17612): the size of
    # PyAV's reads (None: 1 MiB), and ffmpeg's -request_size when it has the option (8.0+;
    # None: open-ended).
    request_size: int | None = bounded(1 << 20, ge=1, le=1 << 30)
    js_runtimes: dict[str, dict] | None = None  # yt-dlp's js_runtimes; None: its default (deno)
    player_clients: tuple[str, ...] | None = None  # YouTube player clients; None: player_clients()
    # A bgutil PO-token provider's HTTP server (its base URL; avfusion[pot] installs the
    # yt-dlp plugin that asks it): YouTube's bot check passes more often with tokens.
    pot_provider: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # allowed yt-dlp options (_EXTRA_ALLOWED)
    # How the window is fetched once yt-dlp has resolved the formats. "ffmpeg": yt-dlp's
    # section downloader (an ffmpeg process remuxing into mp4). "pyav": this process
    # reads the window's packets from the format URLs with PyAV and copies them into a
    # local Matroska file, no process and no re-encoding (``_copy_window``).
    fetch: str = "pyav"

    def __post_init__(self) -> None:
        from avfusion.config import ConfigError

        if self.fetch not in FETCHERS:
            raise ConfigError(f"download.fetch: {self.fetch!r}; allowed: {list(FETCHERS)}")
        check_bounds(self, "download")
        check_pool(self.proxy, self.proxies)
        check_egress_id(self.egress_id)
        check_extra(self.extra)
        check_player_clients(self.player_clients)

    @property
    def pool(self) -> tuple[str, ...]:
        """The proxies downloads go through: ``proxies``, or ``proxy`` as a pool of one."""
        return self.proxies or ((self.proxy,) if self.proxy else ())


FETCHERS = ("ffmpeg", "pyav")

# Clients YouTube answers with SABR streams only (yt-dlp: "YouTube is forcing SABR
# streaming for this client"): no format URL, so no section can come from them.
SABR_ONLY_CLIENTS = ("web", "web_safari")
# yt-dlp 2026.11.23's defaults, for a yt-dlp whose YouTube extractor no longer has them.
_FALLBACK_CLIENTS = {False: ("tv_samsung", "visionos"), True: ("tv_samsung", "web_embedded", "web")}


def _innertube_clients() -> dict[str, dict]:
    """yt-dlp's YouTube clients and their traits (``SUPPORTS_COOKIES``); empty when this
    yt-dlp keeps them elsewhere (then names are not checked here, yt-dlp warns instead)."""
    try:
        from yt_dlp.extractor.youtube._base import INNERTUBE_CLIENTS
    except ImportError:
        return {}
    return dict(INNERTUBE_CLIENTS)


def check_player_clients(clients: tuple[str, ...] | None) -> None:
    from avfusion.config import ConfigError

    if clients is None:
        return
    known = _innertube_clients()
    unknown = [c for c in clients if known and (c not in known or c.startswith("_"))]
    if not clients or unknown:
        allowed = sorted(c for c in known if not c.startswith("_"))
        raise ConfigError(
            f"download.player_clients: {'unknown client ' + repr(unknown[0]) if unknown else 'empty'}; "
            f"allowed: {allowed}"
        )
    sabr = [c for c in clients if c in SABR_ONLY_CLIENTS]
    if sabr:
        raise ConfigError(
            f"download.player_clients: {sabr[0]!r} gets SABR-only streams, from which no section can be "
            "downloaded; leave it out"
        )


def player_clients(cfg: DownloadConfig) -> tuple[str, ...]:
    """The YouTube player clients yt-dlp is told to ask: ``cfg.player_clients``, else
    yt-dlp's own defaults for a guest or an account (they move between its releases),
    less SABR-only clients and, with cookies, clients that take none (yt-dlp skips them)."""
    if cfg.player_clients:
        return cfg.player_clients
    try:
        from yt_dlp.extractor.youtube import YoutubeIE

        defaults = getattr(YoutubeIE, "_DEFAULT_AUTHED_CLIENTS" if cfg.cookies else "_DEFAULT_CLIENTS")
    except (ImportError, AttributeError):
        defaults = _FALLBACK_CLIENTS[bool(cfg.cookies)]
    known = _innertube_clients()
    clients = tuple(
        c
        for c in defaults
        if c not in SABR_ONLY_CLIENTS
        and not (cfg.cookies and known and not known.get(c, {}).get("SUPPORTS_COOKIES"))
    )
    if cfg.pot_provider and not any(uses_po_tokens(c) for c in clients):
        # yt-dlp asks a provider only for a client whose formats need a token; the guest
        # defaults need none, so a provider alone would never be asked. mweb is the client
        # yt-dlp's PO Token Guide pairs with a provider (its formats need a GVS token).
        clients = (*clients, "mweb")
    return clients or ("tv_samsung",)


def uses_po_tokens(client: str) -> bool:
    """Whether yt-dlp asks a PO-token provider for ``client`` (a token its formats need)."""
    traits = _innertube_clients().get(client.split(".")[0], {})
    policies = (traits.get("GVS_PO_TOKEN_POLICY") or {}).values()
    return bool(traits.get("PO_TOKEN_REQUIRED_CONTEXTS")) or any(p.required for p in policies)


def check_pool(proxy: str | None, proxies: tuple[str, ...]) -> None:
    from collections import Counter

    from avfusion.config import ConfigError

    if proxy is not None and proxies:
        raise ConfigError(
            "download.proxy and download.proxies both given: give one (a pool of one is a proxy)"
        )
    if not isinstance(proxies, tuple):
        raise ConfigError("download.proxies: expected a list of proxy URLs")
    for p in proxies:
        check_proxy(p)
    identities = [_identity(p) for p in proxies]
    seen = Counter(identities)
    for i, (p, identity) in enumerate(zip(proxies, identities, strict=True), 1):
        if seen[identity] > 1:
            raise ConfigError(f"download.proxies: entry {i} ({_endpoint(p)}) is given more than once")


def _identity(proxy: str) -> tuple[str, ...]:
    """What makes two proxy URLs one exit: scheme, host, port, user and password, as the
    proxy reads them (case, a trailing dot, percent-encoding and default ports aside)."""
    import ipaddress
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host = (parts.hostname or "").rstrip(".")
    with contextlib.suppress(ValueError):
        host = str(ipaddress.ip_address(host))
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    return (parts.scheme.lower(), host, str(parts.port or _default_port(parts.scheme)), user, password)


def _default_port(scheme: str) -> int:
    scheme = scheme.lower()
    return 443 if scheme == "https" else 1080 if scheme.startswith("socks") else 80


def _endpoint(proxy: str) -> str:
    """``host:port`` of a proxy URL (IPv6 in brackets), never its credentials."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = parts.hostname or "?", parts.port or _default_port(parts.scheme)
    except ValueError:
        return "a malformed URL"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_egress_id(egress_id: str | None) -> None:
    from avfusion.config import ConfigError

    if egress_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,99}", egress_id):
        raise ConfigError(
            "download.egress_id: 1-100 characters of letters, digits and . _ : @ / -, starting with a "
            "letter or digit"
        )


def egress_names(proxies: tuple[str, ...]) -> list[str]:
    """How the governor, the stats and the logs name each proxy of a pool: ``proxy
    host:port``, with ``#N`` (its place in the pool) where several share an endpoint (a
    provider's gateway with one user name per exit). Never a user name: some providers
    put the API key there."""
    from collections import Counter

    endpoints = [_endpoint(p) for p in proxies]
    shared = Counter(endpoints)
    return [f"proxy {e}#{i}" if shared[e] > 1 else f"proxy {e}" for i, e in enumerate(endpoints, 1)]


def node_address() -> str:
    """This node's IP address (the interface its default route leaves by), else its
    host name: the default egress name, so tasks of one node share a budget."""
    import socket

    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # TEST-NET-1; a UDP connect sends nothing, it picks a route
        return str(sock.getsockname()[0])
    return socket.gethostname()


def egress_pool(cfg: DownloadConfig) -> dict[str, str | None]:
    """The egress addresses downloads go out by, as governor names → the proxy to use
    (None: the node's own address, named ``cfg.egress_id`` or the node's IP)."""
    if cfg.pool:
        return dict(zip(egress_names(cfg.pool), cfg.pool, strict=True))
    return {cfg.egress_id or node_address(): None}


def check_proxy(proxy: str | None) -> None:
    """A proxy is ``scheme://[user:password@]host:port`` and nothing else, or a
    ``ConfigError`` that does not repeat it (it may hold a password). An unencoded ``#``
    or ``?`` in a password would otherwise cut the URL there: the host becomes the user
    name, and the rest of the password lands in error messages."""
    from urllib.parse import urlsplit

    from avfusion.config import ConfigError

    if proxy is None:
        return
    try:
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")  # yt-dlp's default scheme
        ok = bool(parts.hostname) and parts.path in ("", "/")
        ok = ok and not (parts.query or parts.fragment or "#" in proxy or "?" in proxy)
        ok = ok and (parts.port is None or 0 < parts.port)  # .port raises ValueError past 65535
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(
            "download.proxy: not a proxy URL; allowed: scheme://host:port with nothing after the port, "
            "credentials as USER:PASSWORD@ before the host (percent-encode '#', '?', '/', '@', ':' in them)"
        )


# yt-dlp options ``DownloadConfig.extra`` may carry (YAML ``download: extra:``, every
# ``--yt-dlp-option``). A config may be someone else's file (``--config s3://…``), so
# only options that can neither execute anything nor write outside the clip's work dir
# pass; each with the check of its value. Left out on purpose, among others:
# postprocessors / exec_cmd / post_hooks / progress_hooks / logger (run code or
# commands), external_downloader(_args) / postprocessor_args (arbitrary ffmpeg or
# aria2c arguments: output files, protocols), paths / outtmpl / download_archive /
# writeinfojson / cookiesfrombrowser / load_info_filename / cachedir / check_formats
# (write or read files elsewhere; check_formats writes test downloads to the system
# temp dir), netrc_cmd / usenetrc / username / password (run a command or carry
# credentials no redaction knows of), remote_components (fetches JS that the runtime
# then executes), nocheckcertificate / enable_file_urls (a man in the middle gets the
# cookies; local files are read), source_address / geo_verification_proxy (apply to
# yt-dlp's requests but not ffmpeg's: the media would come from elsewhere),
# retries / extractor_retries / fragment_retries (this module's retry loop is the one
# in control), impersonate (the API wants an ImpersonateTarget, not text).
_EXTRA_ALLOWED: dict[str, str] = {
    "format_sort": "a list of yt-dlp sort fields",
    "format_sort_force": "true/false",
    "prefer_free_formats": "true/false",
    "extractor_args": "{extractor: {argument: [values]}}",
    "http_headers": "{header: value}",
    "sleep_interval": "seconds >= 0",
    "max_sleep_interval": "seconds >= 0",
    "geo_bypass": "true/false",
    "geo_bypass_country": "a two-letter country code",
    "geo_bypass_ip_block": "an IP block in CIDR notation",
    "age_limit": "an age in years",
    "allowed_extractors": "a list of extractor names",
}
# Options this module sets from a DownloadConfig field (or keeps fixed): a user who
# reaches for them in ``extra`` is pointed at the field.
_EXTRA_HAS_FIELD: dict[str, str] = {
    "format": "download.format / --format",
    "cookiefile": "download.cookies / --cookies",
    "proxy": "download.proxy / --proxy",
    "ratelimit": "download.rate_limit / --rate-limit",
    "sleep_interval_requests": "download.sleep_seconds / --sleep",
    "socket_timeout": "download.socket_timeout",
    "ffmpeg_location": "download.ffmpeg",
    "js_runtimes": "download.js_runtimes",
    "retries": "download.max_attempts / --max-attempts",
    "extractor_retries": "download.max_attempts / --max-attempts",
    "fragment_retries": "download.max_attempts / --max-attempts",
}
# Headers that carry credentials: yt-dlp hands http_headers to ffmpeg on its command
# line (``-headers``), where every user of the machine can read them.
_SECRET_HEADERS = frozenset({"cookie", "authorization", "proxy-authorization"})
# Extractor arguments naming a file, folder or program (PO-token provider plugins take
# a script path this way): a config must not choose what runs or what is read.
_EXTRACTOR_ARG_PATHLIKE = re.compile(r"path|script|dir|file|cmd|command|exec|bin|home|cache", re.I)


def check_extra(extra: dict[str, Any]) -> None:
    """Raise ``ConfigError`` (one line naming the key and what is allowed) unless every
    option in ``extra`` is on the allow-list with a value of the right shape."""
    from avfusion.config import ConfigError

    if not isinstance(extra, dict):
        raise ConfigError(f"download.extra: expected a mapping of yt-dlp options, got {extra!r:.80}")
    for key, value in extra.items():
        if key in _EXTRA_HAS_FIELD:
            raise ConfigError(
                f"download.extra: yt-dlp option {key!r} has its own setting: use {_EXTRA_HAS_FIELD[key]}"
            )
        if key not in _EXTRA_ALLOWED:
            raise ConfigError(
                f"download.extra: yt-dlp option {key!r} is not allowed (only options that cannot run "
                f"commands or write files pass); allowed: {', '.join(sorted(_EXTRA_ALLOWED))}"
            )
        problem = _extra_value_problem(key, value)
        if problem:
            # Header values may be credentials: the refusal names the keys, never the values.
            shown = sorted(value) if key == "http_headers" and isinstance(value, dict) else value
            raise ConfigError(f"download.extra.{key}: {problem}, got {str(repr(shown))[:120]}")


def _extra_value_problem(key: str, value: Any) -> str | None:
    def strings(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    expected = f"expected {_EXTRA_ALLOWED[key]}"
    if key in ("format_sort", "allowed_extractors"):
        return None if strings(value) else expected
    if key in ("format_sort_force", "prefer_free_formats", "geo_bypass"):
        return None if isinstance(value, bool) else expected
    if key in ("sleep_interval", "max_sleep_interval"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 3600
        return None if ok else "expected seconds in [0, 3600]"
    if key == "age_limit":
        ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 150
        return None if ok else "expected an age in [0, 150]"
    if key == "geo_bypass_country":
        return None if isinstance(value, str) and re.fullmatch(r"[A-Za-z]{2}", value) else expected
    if key == "geo_bypass_ip_block":
        import ipaddress

        if not isinstance(value, str):
            return expected
        try:
            ipaddress.ip_network(value, strict=False)
        except (TypeError, ValueError):
            return expected
        return None
    if key == "http_headers":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            return expected
        if any(not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", k) for k in value):
            return "header names are HTTP tokens (letters, digits, -, no spaces or colons)"
        if any(re.search(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]", v) for v in value.values()):
            return "header values must be single lines without control characters"
        secret = sorted(k for k in value if k.lower() in _SECRET_HEADERS)
        if secret:
            return (
                f"header {secret[0]!r} would be on ffmpeg's command line; give cookies with "
                "download.cookies / --cookies"
            )
        return None
    if key == "extractor_args":
        if not isinstance(value, dict) or not all(
            isinstance(ie, str) and isinstance(args, dict) and all(strings(v) for v in args.values())
            for ie, args in value.items()
        ):
            return "expected {extractor: {argument: [values]}} (values a list of strings)"
        pathlike = sorted(
            f"{ie}:{a}" for ie, args in value.items() for a in args if _EXTRACTOR_ARG_PATHLIKE.search(a)
        )
        if pathlike:
            return f"argument {pathlike[0]!r} names a file or program, which a config may not choose"
        if "player_client" in value.get("youtube", {}):
            return "youtube:player_client is download.player_clients / --player-clients"
        return None
    raise AssertionError(f"no value check for allowed option {key}")


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
        # The proxy's own refusals, before every origin rule: a proxy that denies us is
        # not the source blocking us (the governor must not cool down for it). yt-dlp's
        # requests handler (networking/_requests.py, from urllib3) says "Unable to connect
        # to proxy" for a refused connection and "Tunnel connection failed: 403 Forbidden"
        # for a CONNECT the proxy answers itself; a plain request answered 407 by the proxy
        # is "HTTP Error 407: Proxy Authentication Required"; urllib's handler says
        # "Tunnel connection failed" too (http.client._tunnel).
        (
            "proxy_error",
            True,
            r"unable to connect to proxy|tunnel connection failed|proxy authentication required|"
            r"HTTP Error 407\b|cannot connect to proxy",
        ),
        # The age gate also says "Sign in to confirm …": it must match before the bot check.
        ("age_restricted", False, r"confirm your age|age.restricted|inappropriate for some users"),
        ("blocked_bot_check", True, r"confirm you.?re not a bot|sign in to confirm|captcha challenge"),
        # _video.py: "All player responses are invalid. Your IP is likely being blocked by Youtube".
        ("blocked_ip", True, r"player responses are invalid|your ip is likely being blocked"),
        # "This content isn't available, try again later. The current session has been
        # rate-limited by YouTube for up to an hour" — before the 429 rule ("rate-limited").
        (
            "blocked_session",
            True,
            r"content isn.?t available, try again later|"
            r"has been rate.limited by youtube",
        ),
        # "Video unavailable. This content isn't available." is what every video says once
        # a source has been blocked (yt-dlp 13583, 14095): a suspect, before "unavailable".
        ("content_unavailable", True, r"this content isn.?t available"),
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
        (
            "server_error",
            True,
            r"HTTP Error 5(?:\d\d|xx)\b|internal server error|bad gateway|service unavailable",
        ),
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
        # A missing JS runtime or PO token, or SABR-only answers, as often as the video: a suspect.
        ("no_format", True, r"requested format is not available|no video formats found"),
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


def ffmpeg_http_options(exe: str) -> frozenset[str]:
    """The http protocol options ``exe`` lists (``ffmpeg -h protocol=http``), asked once
    per binary: an ffmpeg before 8.0 refuses ``-request_size`` and would fail every clip.
    A binary that cannot be asked lists none this time, and is asked again next time."""
    import subprocess

    try:
        return _listed_http_options(exe)
    except (OSError, subprocess.SubprocessError):
        return frozenset()


@functools.cache  # a failure raises, so it is not cached
def _listed_http_options(exe: str) -> frozenset[str]:
    import subprocess

    text = subprocess.run(
        [exe, "-hide_banner", "-h", "protocol=http"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return frozenset(re.findall(r"(?:^|\s)-(\w+)", text))


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

    def __init__(self, redact: Callable[[str], str] = redact_patterns) -> None:
        self.warnings: list[str] = []
        self.redact = redact

    def debug(self, msg: str) -> None:
        pass

    info = error = debug

    def warning(self, msg: str) -> None:
        msg = self.redact(_clean(msg.replace("WARNING: ", "", 1)))[:500]
        if msg not in self.warnings:
            self.warnings.append(msg)


# The bgutil plugin (PyPI bgutil-ytdlp-pot-provider): the module yt-dlp loads it from,
# and the extractor-arguments key its HTTP provider reads ``base_url`` under.
POT_PLUGIN_MODULE = "yt_dlp_plugins.extractor.getpot_bgutil_http"
POT_PROVIDER_ARGS = "youtubepot-bgutilhttp"


def pot_provider_problem(url: str) -> str | None:
    """Why ``url`` is not a provider's base URL (an http(s) host, a port, perhaps a path;
    no query, fragment or credentials), or None. The plugin appends ``/ping`` and
    ``/get_pot`` to it as text."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not one
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme.lower() not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
    ):
        return (
            "--pot-provider: give the provider's base URL, an http(s) host and port with no "
            "credentials or query, e.g. http://127.0.0.1:4416"
        )
    return None


def preflight(cfg: DownloadConfig) -> list[str]:
    """Options that would silently not take effect on section downloads (ffmpeg does
    the transfer): each a one-line error with what to use instead."""
    errors = []
    # yt-dlp hands ffmpeg only http(s):// proxies; ffmpeg (9.0) opens no TLS to a proxy
    # and reads its scheme case-sensitively: with https:// or HTTP:// it connects straight
    # to the media host.
    for proxy in cfg.pool:
        if "://" in proxy and not proxy.startswith("http://"):
            errors.append(
                f"proxy {proxy.split('://')[0]}:// does not carry ffmpeg's media transfer, so the "
                "media bytes would bypass it; use an http:// proxy, spelled in lower case (e.g. privoxy "
                "or gost in front of a SOCKS or https:// one)"
            )
            break
    if cfg.pot_provider:
        problem = pot_provider_problem(cfg.pot_provider)
        clients = player_clients(cfg)
        if problem:
            errors.append(problem)
        elif importlib.util.find_spec(POT_PLUGIN_MODULE) is None:
            errors.append(
                "--pot-provider has no effect without the bgutil yt-dlp plugin that asks it: "
                "pip install 'avfusion[pot]'"
            )
        elif not any(uses_po_tokens(c) for c in clients):
            errors.append(
                f"--pot-provider has no effect with the player clients {', '.join(clients)}: none of "
                "them needs a PO token, so yt-dlp never asks; add mweb to --player-clients"
            )
    if cfg.rate_limit:
        errors.append(
            "--rate-limit has no effect: yt-dlp's ratelimit applies to neither PyAV's window reads nor "
            "ffmpeg's section downloads; limit downloads with --downloads-per-hour and --min-spacing instead"
        )
    return errors


def ydl_options(cfg: DownloadConfig, start: float, end: float, workdir: Path) -> dict[str, Any]:
    from yt_dlp.utils import download_range_func

    exe = ffmpeg_executable(cfg.ffmpeg)
    ffmpeg_i = ["-rw_timeout", str(int(cfg.socket_timeout * 1e6)), "-xerror"]
    # Asked of the binary only for the ffmpeg fetch (an ffmpeg run per process): PyAV's
    # fallback to ffmpeg is for HLS/DASH fragments, each already a bounded request.
    if cfg.request_size and cfg.fetch == "ffmpeg" and "request_size" in ffmpeg_http_options(exe):
        ffmpeg_i += ["-request_size", str(cfg.request_size)]
    opts: dict[str, Any] = {
        "format": cfg.format,
        # Always mp4: its edit list hides the stream-copy pre-roll before the cut; mkv/webm
        # output would start at the previous keyframe (the wrong window). A fixed name
        # also avoids yt-dlp's "unknown format" path for extension-less URLs.
        "outtmpl": str(workdir / "clip.mp4"),
        "download_ranges": download_range_func(None, [(start, end)]),
        "force_keyframes_at_cuts": False,  # we decode the window ourselves; no re-encode
        "ffmpeg_location": exe,
        "socket_timeout": cfg.socket_timeout,
        "retries": 0,
        "fragment_retries": 0,
        "extractor_retries": 0,
        "quiet": True,
        "noprogress": True,
        "noplaylist": True,
        "overwrites": True,
        "cachedir": ytdlp_cache_dir(),
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
    args = cfg.extra.get("extractor_args") or {}
    youtube = {**args.get("youtube", {}), "player_client": list(player_clients(cfg))}
    opts["extractor_args"] = {**args, "youtube": youtube}
    if cfg.pot_provider:
        given = args.get(POT_PROVIDER_ARGS, {})
        opts["extractor_args"][POT_PROVIDER_ARGS] = {**given, "base_url": [cfg.pot_provider.rstrip("/")]}
    if cfg.cookies:
        opts["cookiefile"] = cfg.cookies  # replaced by a private copy per attempt
    if cfg.proxy:
        opts["proxy"] = cfg.proxy
    if cfg.sleep_seconds:
        opts["sleep_interval_requests"] = cfg.sleep_seconds
    opts.update({k: v for k, v in cfg.extra.items() if k != "extractor_args"})
    return opts


def ytdlp_cache_dir() -> str | bool:
    """yt-dlp's cache folder for this node: its YouTube extractor keeps the preprocessed
    player JavaScript (and solved challenges, PO tokens) there, so a clip after the first
    neither fetches the player nor preprocesses it again (issue 26: with the cache off,
    every clip paid both). The folder is private to this user (``storage.private_dir``):
    the cached JavaScript is run by the JS runtime, so a folder someone else could write
    is refused, and then yt-dlp runs without a cache (False) rather than fail clips."""
    from avfusion import storage

    try:
        return storage.private_dir("avfusion-ytdlp-cache")
    except OSError:
        return False


def _attempt(
    url: str,
    opts: dict[str, Any],
    workdir: Path,
    logger: _RecordingLogger,
    again: Callable[[str], bool],
    window: _Window | None = None,
) -> Path:
    """One yt-dlp run: one extraction, then the transfer, repeated with the same formats
    while ``again`` (given the failed transfer's message) says so; with a ``window``,
    PyAV copies it (``_copy_window``) from formats it can read (plain http(s) files),
    and yt-dlp's ffmpeg fetches the others. Its cookie jar is a
    private copy of this node's jar for the cookies file (``avfusion.cookiejar``: yt-dlp
    rewrites the cookie file when a ``YoutubeDL`` closes; the user's file may be a
    read-only Secret mount, and threads must not write one file at once), merged back
    into the node's jar after."""
    import yt_dlp

    from avfusion import storage

    _clear(workdir)
    try:
        with contextlib.ExitStack() as stack:
            opts = {**opts, "logger": logger}
            if opts.get("cookiefile"):
                text = storage.read_small(opts["cookiefile"], COOKIES_MAX_BYTES, "cookies file").decode()
                sanitised, problems = sanitise_cookies(text)
                for problem in problems:
                    logger.warning(problem)
                jar = cookiejar.attempt_copy(opts["cookiefile"], sanitised)
                opts["cookiefile"] = stack.enter_context(jar)
                # ffmpeg talks to the relay only: no proxy, whatever the environment says.
                args = opts["external_downloader_args"]
                opts["external_downloader_args"] = {
                    **args,
                    "ffmpeg_i": [*args["ffmpeg_i"], "-http_proxy", ""],
                }
            ydl = stack.enter_context(_recording_ydl()(opts))
            info = _extracted(ydl, url)
            formats = _window_formats(ydl, info) if window is not None else None
            if window is not None and formats is not None:  # cookies never reach a command line
                try:
                    return _transfer(lambda: _copy_window(formats, workdir, window, ydl), workdir, again)
                except _NotCopyable as exc:
                    logger.debug(f"PyAV cannot copy this window ({exc}): yt-dlp's ffmpeg fetches it")
                    _clear(workdir)
            # yt-dlp's section download: the fetch asked for, or formats PyAV does not read
            stack.enter_context(ffmpeg_for_sections(opts["ffmpeg_location"]))
            if opts.get("cookiefile"):
                info, relay = stack.enter_context(_relayed(ydl, info))
                return _transfer(
                    lambda: _ffmpeg_transfer(ydl, info, workdir, relay.refusal), workdir, again, relay.forget
                )
            return _transfer(
                lambda: _ffmpeg_transfer(ydl, info, workdir, lambda: _media_refusal(ydl, ydl.media)),
                workdir,
                again,
            )
    except (yt_dlp.utils.YoutubeDLError, OSError) as exc:
        raise _Failed(_failure_message(exc, workdir)) from exc


def _clear(workdir: Path) -> None:
    from avfusion import storage

    for leftover in workdir.iterdir():
        storage.remove(str(leftover))


def _failure_message(exc: Exception, workdir: Path) -> str:
    import yt_dlp

    if isinstance(exc, _Failed):
        return str(exc)
    partial = any(p.name.endswith(".part") for p in workdir.iterdir())
    name = "" if isinstance(exc, yt_dlp.utils.YoutubeDLError) else f"{type(exc).__name__}: "
    return f"{name}{exc}{' (partial file left)' if partial else ''}"


def _transfer(
    transfer: Callable[[], Path],
    workdir: Path,
    again: Callable[[str], bool],
    forget: Callable[[], None] = lambda: None,
) -> Path:
    """``transfer`` (the window's fetch from formats already extracted), repeated while
    ``again`` says so: a transfer cut by the network or a 5xx does not cost a new
    extraction (the player requests YouTube counts), and YouTube's format URLs are bound
    to the address that extracted them, so the retry goes out the same way. ``forget``:
    drop what an earlier transfer saw."""
    import yt_dlp

    while True:
        forget()
        try:
            return transfer()
        except (yt_dlp.utils.DownloadError, _Failed) as exc:
            message = _failure_message(exc, workdir)
            if not again(message):
                raise _Failed(message) from exc
            _clear(workdir)


def _ffmpeg_transfer(
    ydl: Any, info: dict[str, Any], workdir: Path, refusal: Callable[[], int | None]
) -> Path:
    """yt-dlp's section download of ``info`` (its ffmpeg cuts the window, the file starts
    at it). ``refusal``: the media host's answer when ffmpeg's transfer failed."""
    with _asking_the_media_host_why(refusal):
        ydl.process_ie_result(_fresh(info), download=True)
    return _finished_file(workdir)


@dataclass(frozen=True)
class _Window:
    """What ``_copy_window`` fetches (seconds of the source) and how: the socket timeout,
    the bytes one Range request asks for."""

    start: float
    end: float
    timeout: float
    chunk: int


def _window_formats(ydl: Any, info: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The formats yt-dlp selects for ``info`` (``format``: video and audio, or one file
    with both), when every one is a plain http(s) file PyAV can read a window of; None
    for the others (HLS, DASH fragments, …), which yt-dlp's ffmpeg fetches."""
    chosen = ydl.process_ie_result(_fresh(info), download=False)
    formats = [f for f in chosen.get("requested_formats") or [chosen] if f.get("url")]
    plain = formats and all(f.get("protocol", "https") in ("http", "https") for f in formats)
    return formats if plain else None


def _copy_window(formats: list[dict[str, Any]], workdir: Path, window: _Window, ydl: Any) -> Path:
    """The window of ``formats``, fetched by PyAV in this process (``_MediaReader``: the
    requests go out through ``ydl``) and copied packet for packet into ``clip.mp4``
    (written as ``.part`` and renamed when whole), as yt-dlp's ffmpeg cuts a section: the
    window starts at 0, the packets from the keyframe before it (the decoder needs them)
    lie before 0, hidden by the mp4 edit list; video from the first format that has it,
    audio likewise. A refusal, a reset, a stall or a body cut short raises ``_Failed``
    with what the media host or the network said, so ``classify`` names it (a 403 or 429
    is a block)."""
    import av
    from yt_dlp.networking.exceptions import RequestError

    from avfusion import storage

    part, dest = workdir / "clip.mp4.part", workdir / "clip.mp4"
    copy = _WindowCopy(window)
    try:
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(av.open(str(part), "w", format="mp4"))
            plans = []
            for f in formats:
                reader = stack.enter_context(
                    _MediaReader(ydl, f["url"], _media_headers(f), window.chunk, window.timeout)
                )
                inp = stack.enter_context(av.open(reader, metadata_errors="ignore", timeout=window.timeout))
                streams = copy.take(inp, f)
                if streams:
                    plans.append((inp, streams, reader))
            copy.out_streams = {
                s: out.add_stream_from_template(s) for _, streams, _ in plans for s in streams
            }
            for inp, streams, reader in plans:
                copy.packets(inp, streams, out, reader)
    except (av.FFmpegError, OSError, RequestError) as exc:
        storage.remove(str(part))
        raise _Failed(_fetch_message(exc)) from exc
    except BaseException:
        storage.remove(str(part))
        raise
    if not copy.copied:
        storage.remove(str(part))
        raise _Failed(_NO_PACKETS)
    part.rename(dest)
    return dest


class _WindowCopy:
    """The packet copy of one window (``_copy_window``): which input streams are taken,
    their output streams, the packets copied."""

    def __init__(self, window: _Window) -> None:
        self.window = window
        self.kinds: set[str] = set()
        self.out_streams: dict[Any, Any] = {}
        self.copied = 0

    def take(self, inp: Any, fmt: dict[str, Any]) -> list[Any]:
        """The first video and audio stream of ``inp`` not already taken from an earlier
        format (yt-dlp says ``vcodec``/``acodec`` "none" for a stream a format lacks)."""
        streams = []
        for kind, found, codec in (
            ("video", inp.streams.video, fmt.get("vcodec")),
            ("audio", inp.streams.audio, fmt.get("acodec")),
        ):
            if kind not in self.kinds and found and codec != "none":
                self.kinds.add(kind)
                streams.append(found[0])
        return streams

    def packets(self, inp: Any, streams: list[Any], out: Any, reader: _MediaReader | None = None) -> None:
        """Copy ``streams``' packets of the window from ``inp`` into ``out``: from the
        seek point to the first packet decoded at or after the window's end (decode
        order: every frame shown before the end is then in). Seconds count from the
        source's start time, as ffmpeg's ``-ss`` does. A stream that ends before the
        window does, in a source whose stream lasts longer, is a cut transfer. What a
        stream copy cannot carry raises ``_NotCopyable``."""
        import av

        window = self.window
        base = inp.start_time / av.time_base if inp.start_time is not None else 0.0
        start, end = base + window.start, base + window.end
        # Even at 0: over HTTP, a file whose index is at its end is otherwise read from
        # after its first packet (the keyframe the window needs), where the index was read.
        # An audio-only format is read from _PREROLL before the window: its decoder's first
        # frame needs the one before (with video, the keyframe before the window is earlier).
        preroll = 0.0 if any(s.type == "video" for s in streams) else _PREROLL
        inp.seek(int(max(base, start - preroll) * av.time_base), backward=True, any_frame=False)
        open_streams, reached = set(streams), dict.fromkeys(streams, -math.inf)
        started: set[Any] = set()
        pace = _Pace()
        # Per stream: its time base as integers (int / int is the exact ratio rounded once,
        # as float(Fraction) is, without a Fraction per packet: a sixth of the copy's CPU)
        # and the shift that puts the window's start at 0.
        ticks = {
            s: (s.time_base.numerator, s.time_base.denominator, round(start / s.time_base)) for s in streams
        }
        for packet in inp.demux(*streams):
            stream = packet.stream
            if not packet.size or stream not in open_streams:
                continue  # a demuxer's flush packet, or a stream already past the window
            dts = packet.dts
            if dts is None:  # Matroska's B-frame streams after a seek: no decode order
                raise _NotCopyable("a packet without a decoding time")
            if stream not in started and stream.type == "video" and not packet.is_keyframe:
                raise _NotCopyable("the seek landed on a video packet that is not a keyframe")
            started.add(stream)
            num, den, shift = ticks[stream]
            t = dts * num / den
            if reader is not None and packet.pos is not None and packet.pos >= 0:
                pace.seen(packet.pos, packet.pos + packet.size, t)
                reader.until = pace.until(end)
            if t >= end:
                open_streams.discard(stream)
                if not open_streams:
                    break
                continue
            pts = packet.pts
            packet.pts = None if pts is None else pts - shift
            packet.dts = dts - shift
            reached[stream] = t + (packet.duration or 0) * num / den
            packet.stream = self.out_streams[stream]
            out.mux(packet)
            self.copied += 1
        for stream in open_streams:  # ended without a packet past the window's end
            stream_end = _stream_end(inp, stream)
            if reached[stream] < min(end, stream_end) - _END_SLACK:
                raise _Failed(
                    f"the media transfer ended at {max(reached[stream], start) - base:.1f} s of a window "
                    f"that ends at {min(end, stream_end) - base:.1f} s (truncated {stream.type} stream)"
                )


class _Pace:
    """Where in the file the window is expected to end, from the bytes per second of its
    packets so far (from the first packet's start: its keyframe, the largest, makes the
    estimate start high) or over the last second where that is higher (a bitrate that
    rises within the window), with a margin: the reader asks no further, so a window's
    last request does not leave up to a megabyte it asked for in flight."""

    def __init__(self) -> None:
        self.first: tuple[int, float] | None = None
        self.last = (0, 0.0)
        self.recent: collections.deque[tuple[int, float]] = collections.deque()

    def seen(self, start: int, end: int, t: float) -> None:
        if self.first is None:
            self.first = self.last = (start, t)
        self.last = (max(end, self.last[0]), max(t, self.last[1]))
        self.recent.append(self.last)
        while self.recent[0][1] < self.last[1] - 1.0:
            self.recent.popleft()

    def until(self, end: float) -> int | None:
        assert self.first is not None
        (p0, t0), (p, t), (pr, tr) = self.first, self.last, self.recent[0]
        if t - t0 < 0.5:  # too little yet to tell a rate
            return None
        rate = (p - p0) / (t - t0)
        if t - tr >= 0.25:
            rate = max(rate, (p - pr) / (t - tr))
        return int(p + _PACE_MARGIN * rate * max(end - t, 0.0)) + _MIN_ASK


# The expected remainder of a window is asked for with this margin.
_PACE_MARGIN = 1.2


class _NotCopyable(Exception):
    """A window PyAV's packet copy cannot carry (yt-dlp's ffmpeg fetches it instead)."""


def _stream_end(inp: Any, stream: Any) -> float:
    """Where ``stream`` ends, in seconds of the source: its own duration where the file
    states one (a track may end before the others), else the file's."""
    import av

    if stream.duration and stream.start_time is not None:
        return float((stream.start_time + stream.duration) * stream.time_base)
    if inp.duration:
        return ((inp.start_time or 0) + inp.duration) / av.time_base
    return math.inf


# Seconds read before the window, so every decoder starts warm.
_PREROLL = 0.2

# A stream's last packet may end up to a frame or an audio packet before the source's
# stated duration; more than this short of it, the transfer was cut.
_END_SLACK = 0.5


class _MediaReader(io.RawIOBase):
    """A format URL as a seekable file for PyAV: every read is served by one bounded
    Range request (``chunk`` bytes at most, never open-ended: YouTube throttles those,
    yt-dlp 17612) made with ``ydl.urlopen``, so the media goes out as the extraction did:
    yt-dlp's proxy (``https://`` ones too), its cookie jar (cookies the host rotates are
    kept and saved with the jar), the format's headers. libavformat's own HTTP client is
    not used: FFmpeg 8.1 (PyAV's) loses the connection where a ``request_size`` chunk
    ends. A refusal raises yt-dlp's ``HTTPError`` with the host's status."""

    def __init__(self, ydl: Any, url: str, headers: dict[str, str], chunk: int, timeout: float) -> None:
        super().__init__()
        self.ydl, self.url, self.headers, self.chunk, self.timeout = ydl, url, headers, chunk, timeout
        self.ask = 0  # what the last request asked for: the next doubles it while reads run on
        self.budget = _TRANSFER_BUDGET * timeout
        self.deadline = time.monotonic() + self.budget
        self.pos = 0  # where the next read starts
        self.size: int | None = None  # from the first answer's Content-Range
        self.response: Any = None
        self.at = 0  # where the open answer's next byte lies
        self.left = 0  # bytes the open answer still owes
        self.run_end = -1  # where the last read ended: a request from there continues a run
        self.until: int | None = None  # where the window's last packet is expected to end
        self.asked_size = False  # whether the size was asked for (a host may state none)
        # The bytes answers brought, by offset, the latest _KEPT of them: the demuxer jumps
        # back (to the first packet after an index at the end, to a keyframe) onto bytes
        # the origin already sent.
        self.kept: collections.deque[tuple[int, bytes]] = collections.deque()
        self.kept_bytes = 0
        # The answer the demuxer last jumped away from, (answer, at, left): what it still
        # owes is on its way, and the demuxer often comes back for it (the head of a file
        # indexed at its end). Read only if a read needs it, so it never holds one up.
        self.parked: tuple[Any, int, int] | None = None
        self.revived = False  # whether the open answer was a parked one

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Only moves the position: the next read decides whether the open answer can
        serve it (libavformat asks for the size by seeking to the end and back)."""
        if whence == io.SEEK_END and self.size is None:
            if not self.asked_size:
                self.asked_size = True
                self._request(0)  # the size comes with the first answer
            if self.size is None:
                return -1  # a host that states none: libavformat reads on without it
        target = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size or 0}[whence] + offset
        if target < 0:
            return -1
        self.pos = target
        return self.pos

    def read(self, size: int = -1) -> bytes:
        if size == 0 or (self.size is not None and self.pos >= self.size):
            return b""
        for at, piece in reversed(self.kept):
            if at <= self.pos < at + len(piece):
                data = piece[self.pos - at :] if size < 0 else piece[self.pos - at : self.pos - at + size]
                self.pos = self.run_end = self.pos + len(data)
                return data
        if not self._serves(self.response, self.at, self.left) and self.parked and self._serves(*self.parked):
            self._drop()
            (self.response, self.at, self.left), self.parked, self.revived = self.parked, None, True
        try:
            return self._read_open(size)
        except (_Failed, OSError) as exc:
            if not self.revived or "timed out: over" in str(exc):
                raise
        except Exception as exc:  # yt-dlp's TransportError: a parked answer the host let go
            from yt_dlp.networking.exceptions import TransportError

            if not (self.revived and isinstance(exc, TransportError)):
                raise
        self._drop()  # a parked answer that failed: what it brought is kept, the rest asked anew
        self.revived = False
        return self.read(size)

    def _serves(self, response: Any, at: int, left: int) -> bool:
        """Whether an answer holds the next read's bytes, at most a short hop ahead."""
        return response is not None and at <= self.pos < at + left and self.pos - at <= _SKIP

    def _read_open(self, size: int) -> bytes:
        ahead = self.pos - self.at
        if self.response is not None and 0 < ahead <= min(self.left, _SKIP):
            self._take(ahead)  # a short hop forward: read past it rather than ask again
        if self.response is None or not self.left or self.at != self.pos:
            if not self._request(self.pos):
                return b""  # past the end (416)
            if self.at < self.pos:  # a small file's rest, asked from before the read
                if self.pos >= self.at + self.left:  # cut short by bytes held: ask at the read
                    self._drop()
                    if not self._request(self.pos, whole=False):
                        return b""
                else:
                    self._take(self.pos - self.at)
        data = self._take(self.left if size < 0 else min(size, self.left))
        self.pos = self.run_end = self.at
        return data

    def _take(self, n: int) -> bytes:
        pieces: list[bytes] = []
        while n > 0:  # in pieces, so the transfer's deadline is checked while a host drips
            if time.monotonic() > self.deadline:
                raise _Failed(f"the media transfer timed out: over {self.budget:.0f} s for one window")
            piece = self.response.read(min(n, 16 << 10))
            if not piece:
                break
            piece = bytes(piece)
            pieces.append(piece)
            self.kept.append((self.at, piece))  # as it comes: a failure later keeps what came
            self.kept_bytes += len(piece)
            while self.kept_bytes > _KEPT:
                self.kept_bytes -= len(self.kept.popleft()[1])
            self.at += len(piece)
            self.left -= len(piece)
            n -= len(piece)
        data = b"".join(pieces)
        if not data and self.size is None:  # a whole body of no stated length: its end is the file's
            self.size, self.left = self.at, 0
            return b""
        if not data:
            raise _Failed(f"the media host's answer ended {self.left} bytes short of its range (truncated)")
        return data

    def _request(self, start: int, whole: bool = True) -> bool:
        """Ask for bytes from ``start`` (``whole``: a small file's rest from the end of its
        kept head, which the caller reads through to ``start``)."""
        from yt_dlp.networking import Request
        from yt_dlp.networking.exceptions import HTTPError, TransportError

        # A run of reads asks twice what the last request did (up to ``chunk``); a jump
        # starts at _FIRST_ASK again: what a closed answer leaves in flight is at most
        # what it was asked for.
        ask = max(2 * self.ask, _HEAD_ASK) if start == self.run_end else _FIRST_ASK
        index_end, media_next = self._index_end() or (-1, False)
        in_index = start < index_end
        if not self.kept and start == 0:  # the head: an MP4's index may be a kilobyte (DASH)
            ask = _HEAD_ASK
        elif in_index:
            # the rest of an MP4's index in one request, and the next box's header if
            # unknown: no more (the window lies elsewhere), no less (a round trip each)
            ask = index_end - start + (0 if media_next else _BOX_HEADER)
        if self.response is not None and self.left:
            self._unpark()  # one answer parked at most: the latest jumped from
            self.parked = (self.response, self.at, self.left)
            self.response = None
        self._drop()
        self.revived = False
        # Bytes kept, or owed by the parked answer, are not asked for again.
        held = [at for at, _ in self.kept] + ([self.parked[1]] if self.parked else [])
        head = self._peek_end(0)
        if self.parked and self.parked[1] <= head < self.parked[1] + self.parked[2]:
            head = self.parked[1] + self.parked[2]  # the head's own answer still owes the bytes after it
        rest = None if self.size is None else self.size - head
        if (
            whole
            and rest is not None
            and rest <= min(_SMALL_FILE, self.chunk)
            and head <= start
            and not any(head < at <= start for at in held)  # else the request would stop short
        ):
            start, ask, in_index = head, rest, False  # the rest of a small file in one
        ask = min(ask, self.chunk)
        end = start + ask - 1 if self.size is None else min(start + ask, self.size) - 1
        end = min([end, *(at - 1 for at in held if at > start)])
        if self.until is not None and start < self.until:
            # no further than the window needs (what is asked is sent); past that point the
            # estimate stands still inside a big packet, and the run's doubling asks on
            end = min(end, max(self.until, start + _MIN_ASK) - 1)
        # what this request asks, bounds and all: the next doubles it; reads past an index
        # (the demuxer probing the first packets) start a run of their own
        self.ask = _PROBE_ASK // 2 if in_index else end - start + 1
        headers = {**self.headers, "Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"}
        request = Request(self.url, headers=headers, extensions={"timeout": self.timeout})
        try:
            try:
                response = self.ydl.urlopen(request)
            except TransportError as exc:
                # A pooled keep-alive connection the host or the proxy closed meanwhile
                # fails before any answer: a Range GET is idempotent, so once more, anew
                # (not after a timeout: that would only double the wait).
                if "timed out" in str(exc).lower():
                    raise
                response = self.ydl.urlopen(request)
        except HTTPError as exc:
            if exc.status != 416:
                raise
            exc.close()
            return False
        span = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range") or "")
        if response.status == 206 and span and int(span[1]) == start:
            self.at, self.left = start, int(span[2]) - start + 1
            self.size = int(span[3]) if span[3] != "*" else self.size
        elif response.status == 200:  # a host without Range: the whole body, read up to ``start``
            self.size = int(response.headers.get("Content-Length") or 0) or self.size
            self.at, self.left = start, (self.size or 1 << 62) - start
            skip = start
            while skip:
                skip -= len(response.read(min(skip, 1 << 16)) or b"") or skip
        else:
            response.close()
            raise _Failed(
                f"the media host answered a Range request for bytes {start}-{end} with status "
                f"{response.status} and range {response.headers.get('Content-Range')!r}"
            )
        self.response = response
        return True

    def _peek(self, at: int, n: int) -> bytes:
        """Up to ``n`` kept bytes from ``at`` on (fewer where what is kept stops)."""
        out = b""
        while len(out) < n:
            found = next(((o, p) for o, p in self.kept if o <= at + len(out) < o + len(p)), None)
            if found is None:
                break
            o, piece = found
            out += piece[at + len(out) - o : at + n - o]
        return out

    def _peek_end(self, at: int) -> int:
        """Where the kept bytes that run on from ``at`` end (``at`` if none are kept)."""
        while (piece := next(((o, p) for o, p in self.kept if o <= at < o + len(p)), None)) is not None:
            at = piece[0] + len(piece[1])
        return at

    def _index_end(self) -> tuple[int, bool] | None:
        """Where an MP4's index (its top-level boxes before the first ``mdat`` or ``moof``)
        ends, as far as the box headers kept tell: (offset, whether a media box starts
        there). None for a file whose head is not kept or not an MP4 (WebM, MPEG-TS)."""
        at = 0
        for _ in range(_INDEX_BOXES):
            head = self._peek(at, 16)
            if len(head) < 8:
                return (at, False) if at else None
            size, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if at == 0 and kind != b"ftyp":
                return None
            if kind in (b"mdat", b"moof"):
                return at, True
            if size == 1:
                if len(head) < 16:
                    return at, False
                size = int.from_bytes(head[8:16], "big")
            if size < 8:  # to the end of the file, or malformed: nothing to bound by
                return None
            at += size
        return None  # a head of thousands of boxes is no index we know: no bound

    def _unpark(self) -> None:
        if self.parked is not None:
            self.parked[0].close()
            self.parked = None

    def _drop(self) -> None:
        if self.response is not None:
            self.response.close()
            self.response = None
        self.left = 0

    def close(self) -> None:
        self._unpark()
        self._drop()
        super().close()


def _media_headers(fmt: dict[str, Any]) -> dict[str, str]:
    """yt-dlp's headers for one format (``ydl.urlopen`` adds the jar's cookies). A header
    with a line break (a hostile extractor answer) is dropped, never sent."""
    headers = fmt.get("http_headers") or {}
    return {str(k): str(v) for k, v in headers.items() if not re.search(r"[\r\n]", f"{k}{v}")}


# A transfer's whole budget in socket timeouts: each read is bounded by the timeout, and
# this bounds a host that sends a few bytes just inside it (ffmpeg's fetch has no such bound).
_TRANSFER_BUDGET = 10

# The bytes one Range request of ``_MediaReader`` asks for when ``request_size`` is None,
# and the longest hop forward it reads through rather than ask again (a request costs a
# round trip; demuxers hop over a few atoms).
_CHUNK = 1 << 20
_SKIP = 256 << 10
# The first request after a jump (to an index at the end, to the window's start).
_FIRST_ASK = 128 << 10
# A reader's first request, at the file's head: a DASH format's index (ftyp, moov, sidx)
# is about a kilobyte; a progressive MP4's index is then asked for in one more request,
# to its end, as its box header says (``_MediaReader._index_end``).
_HEAD_ASK = 16 << 10
# A file this small (its size comes with the head's answer) is asked for whole after its
# head: one request more, not a run of small ones.
_SMALL_FILE = 512 << 10
_BOX_HEADER = 16  # an MP4 box header, 64-bit size included
_INDEX_BOXES = 64  # the top-level boxes walked before the media (a real index has a few)
# The first request of the reads right after an MP4's index: the demuxer probing the
# first packets, a few kilobytes, before it jumps to the window.
_PROBE_ASK = 16 << 10
# The least a request asks for, past where the window was expected to end.
_MIN_ASK = 16 << 10
# The latest bytes a reader keeps to serve reads again.
_KEPT = 2 << 20


def _fetch_message(exc: BaseException) -> str:
    """What a failed window copy says, in ``classify``'s words: the media host's status
    as yt-dlp reports it (a 403 or 429 is a block, a 407 the proxy's, a 5xx a server
    error; another 4xx refuses this format URL, and the next extraction gets new ones:
    its words, "Not Found", would read as the video's), yt-dlp's transport errors as they
    are, our read timeout as a timeout, an early end as a cut transfer. Never the URL
    (a format URL carries signatures)."""
    import av
    from yt_dlp.networking.exceptions import HTTPError

    if isinstance(exc, HTTPError):
        status = exc.status
        exc.close()
        if status in (403, 429):
            return f"the media host answered HTTP Error {status} to a ranged request ({exc.reason})"
        if status == 407 or status >= 500:
            return f"HTTP Error {status}: {exc.reason}"
        return f"the media host refused the format URL with status {status}"
    text = re.sub(r"\b[a-zA-Z][\w+.-]*://\S+", "<url>", getattr(exc, "strerror", None) or str(exc))
    if isinstance(exc, av.ExitError):  # av.open's timeout interrupted a stalled read
        return f"the media transfer timed out ({text})"
    if isinstance(exc, av.EOFError):
        return f"the media transfer ended early (truncated: {text})"
    # yt-dlp's transport errors by name: "IncompleteRead: 32768 bytes read, …" is a cut body
    return f"{type(exc).__name__}: {text}"


def _merged(outer: dict[str, Any], inner: dict[str, Any]) -> dict[str, Any]:
    """A ``url_transparent`` result over what its URL gave, as yt-dlp's
    ``process_ie_result`` merges them: the embedding page's fields (its Referer, a
    clip's section and format order) win, except the clip's own id when it cuts no
    section."""
    exempt = {"_type", "url", "ie_key"}
    if not outer.get("section_end") and outer.get("section_start") is None:
        exempt |= {"id", "extractor", "extractor_key"}
    merged = {**inner, **{k: v for k, v in outer.items() if v is not None and k not in exempt}}
    if merged.get("_type") == "url":
        merged["_type"] = "url_transparent"
    return merged


def _fresh(value: Any) -> Any:
    """A copy of an extraction's dicts and lists, for one transfer: yt-dlp's processing
    writes into the info and its formats. What else they hold is shared, not deep-copied:
    YouTube's lazy fragment lists wrap generators, which ``copy.deepcopy`` refuses."""
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    return value


_NO_PACKETS = "yt-dlp wrote a file without media packets (truncated download)"


def _finished_file(workdir: Path) -> Path:
    unfinished = (".part", ".ytdl", ".temp")
    outputs = [p for p in workdir.iterdir() if p.is_file() and not p.name.endswith(unfinished)]
    if not outputs:
        raise _Failed("yt-dlp reported success but wrote no file (partial download)")
    if outputs[0].stat().st_size == 0:
        raise _Failed("yt-dlp wrote an empty file (truncated download)")
    if not _has_packets(outputs[0]):
        # ffmpeg answered by a 429/403 after its first read exits 0 with stream headers
        # and no packets: the transfer was cut, the clip is not at fault.
        raise _Failed(_NO_PACKETS)
    return outputs[0]


def _extracted(ydl: Any, url: str) -> dict[str, Any]:
    """yt-dlp's extraction of ``url``, unprocessed (formats not yet selected), following
    URL results to the extractor that has the video. One video only: a playlist's
    entries would all be written to the one output name."""
    from yt_dlp.utils import sanitize_url

    info = ydl.extract_info(url, download=False, process=False)
    for _ in range(3):  # a URL result points at the extractor that has the video
        if not info or info.get("_type") not in ("url", "url_transparent"):
            break
        outer = info
        inner = ydl.extract_info(
            sanitize_url(outer["url"], scheme="https"),
            download=False,
            process=False,
            ie_key=outer.get("ie_key"),
        )
        info = _merged(outer, inner) if outer["_type"] == "url_transparent" and inner else inner
    if not info or info.get("_type", "video") != "video":
        raise _Failed(f"unsupported url: {url} is not a single video")
    return info


@functools.cache
def _recording_ydl() -> type:
    """``YoutubeDL`` remembering the media each transfer was handed (``dl`` is where
    yt-dlp gives a format to its downloader): yt-dlp runs ffmpeg with ``-loglevel
    quiet``, so a refused transfer says only "ffmpeg exited with code 8". It also
    registers its extractors in the order yt-dlp computed once in this process
    (``_default_extractors``) instead of ordering all of them again for every attempt."""
    import yt_dlp
    from yt_dlp.extractor.common import UnsupportedURLIE

    class RecordingYoutubeDL(yt_dlp.YoutubeDL):
        media: list[dict[str, Any]] = []

        def dl(self, name: str, info: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            self.media = [f for f in info.get("requested_formats") or [info] if f.get("url")]
            return super().dl(name, info, *args, **kwargs)

        def build_request_director(self, *args: Any, **kwargs: Any) -> Any:
            director = super().build_request_director(*args, **kwargs)
            for handler in director.handlers.values():
                handler._make_sslcontext = functools.partial(_shared_ssl_context, handler)
            return director

        def add_default_info_extractors(self) -> None:
            allowed = tuple(self.params.get("allowed_extractors") or ["default"])
            for cls in _default_extractors(allowed):
                # an instance is bound to its YoutubeDL (yt-dlp instantiates a registered
                # class from its own registry): the catch-all and ours, a fresh one each
                ie: Any = cls
                if cls is UnsupportedURLIE:
                    ie = UnsupportedURLIE()
                elif ie.ie_key() == "Generic":
                    ie = _head_first_generic()()
                self.add_info_extractor(ie)

    return RecordingYoutubeDL


# A URL whose path names a media file: the generic extractor's first look is a HEAD.
_MEDIA_PATH = re.compile(
    r"\.(?:mp4|m4a|m4v|mov|webm|mkv|mka|mp3|ogg|oga|ogv|opus|flac|wav|aac|3gp|ts)$", re.I
)
# The content types yt-dlp's generic extractor takes for a direct link or a manifest, and
# the untyped bytes object stores answer for files stored without one: with no body to
# sniff, it takes those for a direct link too (they are not HTML).
_DIRECT_TYPE = re.compile(
    r"(?:audio|video|application(?=/(?:ogg$|(?:vnd\.apple\.|x-)?mpegurl)))/[^;\s]+"
    r"|(?:application|binary)/octet-stream\b",
    re.I,
)


@functools.cache
def _head_first_generic() -> type:
    """yt-dlp's generic extractor, whose first look at a URL named like a media file is a
    HEAD. Its own first look is a GET without Range, dropped after the headers when they
    say media: the origin has sent whatever the socket buffers held by then (0.2 MB a clip
    on loopback, more than the 10 s window's media for a 5-minute source). The answer is
    the same request's but for the body, so yt-dlp's handling of it is kept whole: a direct
    link or a manifest is taken from its headers, its errors (a 404, a 403, a proxy's) are
    the GET's; a page (HTML, which the extractor reads) is asked for again with GET, as is
    a host that refuses HEAD (405, 501). Untyped bytes (``application/octet-stream``, as
    object stores serve files uploaded without a type) at a media file's name are taken
    for the file: the extractor sniffs an empty body, which is not HTML."""
    from yt_dlp.extractor.generic import GenericIE
    from yt_dlp.networking import HEADRequest
    from yt_dlp.networking.exceptions import HTTPError
    from yt_dlp.utils import ExtractorError

    class HeadFirstGenericIE(GenericIE):
        _first_look: str | None = None

        @classmethod
        def ie_key(cls) -> str:
            return "Generic"

        def _real_extract(self, url: str) -> Any:
            self._first_look = url
            try:
                return super()._real_extract(url)
            finally:
                self._first_look = None

        def _request_webpage(self, url_or_request: Any, video_id: Any, *args: Any, **kwargs: Any) -> Any:
            look, self._first_look = self._first_look, None
            if (
                not isinstance(url_or_request, str)
                or look is None
                or not _MEDIA_PATH.search(urllib.parse.urlparse(url_or_request).path)
            ):
                return super()._request_webpage(url_or_request, video_id, *args, **kwargs)
            try:
                head = super()._request_webpage(HEADRequest(url_or_request), video_id, *args, **kwargs)
            except ExtractorError as exc:
                if not (isinstance(exc.cause, HTTPError) and exc.cause.status in (405, 501)):
                    raise
            else:
                if _DIRECT_TYPE.match(head.headers.get("Content-Type", "")):
                    return head
                head.close()
            return super()._request_webpage(url_or_request, video_id, *args, **kwargs)

    return HeadFirstGenericIE


def _shared_ssl_context(handler: Any, legacy_ssl_support: bool | None = None) -> Any:
    """The TLS context yt-dlp's ``handler`` would make, made once per process for its
    settings: each ``YoutubeDL`` (one per attempt) otherwise loads certifi's CA bundle
    anew, 15 ms of CPU a clip whatever the scheme (handlers are built on the first
    request). Keyed by the settings (verification, legacy renegotiation, which CA store,
    the client certificate's paths and password); a certificate file changed on disk
    (inode, size, modification or change time) replaces its setting's context, so a
    renewed one is read and renewals do not pile up. A context is safe to share between
    threads (nothing downstream sets anything on it). SSLKEYLOGFILE is read when the
    first context is made, as for any process-wide TLS setting."""
    make = functools.partial(type(handler)._make_sslcontext, handler, legacy_ssl_support)
    legacy = handler.legacy_ssl_support if legacy_ssl_support is None else legacy_ssl_support
    cert = handler._client_cert
    password = cert.get("client_certificate_password")
    if not isinstance(password, str | bytes | None):  # a callable or a buffer: no key
        return make()
    paths = tuple(p for p in (cert.get("client_certificate"), cert.get("client_certificate_key")) if p)
    try:
        stamps = tuple((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) for st in map(os.stat, paths))
    except OSError:  # yt-dlp's own message for a missing certificate
        return make()
    settings = (handler.verify, bool(legacy), handler.prefer_system_certs, paths, password)
    with _SSL_LOCK:
        held = _SSL_CONTEXTS.get(settings)
        if held is None or held[0] != stamps:
            held = _SSL_CONTEXTS[settings] = (stamps, make())
    return held[1]


_SSL_CONTEXTS: dict[tuple[Any, ...], tuple[tuple[Any, ...], Any]] = {}
_SSL_LOCK = threading.Lock()


@functools.cache
def _default_extractors(allowed: tuple[str, ...]) -> tuple[type, ...]:
    """The extractor classes, in order, that yt-dlp's own ``add_default_info_extractors``
    registers for ``allowed_extractors``: run once per process on a recorder. yt-dlp
    orders its ~1,800 extractors by regex for every ``YoutubeDL`` (35 ms of CPU per clip,
    a sixth of a clip's whole cost, measured with ``bench preprocess``)."""
    import yt_dlp

    class Recorder:
        params = {"allowed_extractors": list(allowed)}
        classes: list[type] = []

        def add_info_extractor(self, ie: Any) -> None:
            self.classes.append(ie if isinstance(ie, type) else type(ie))

        def write_debug(self, *args: Any, **kwargs: Any) -> None:
            pass

    recorder = Recorder()
    yt_dlp.YoutubeDL.add_default_info_extractors(recorder)
    return tuple(recorder.classes)


@contextlib.contextmanager
def _asking_the_media_host_why(refusal: Callable[[], int | None]) -> Iterator[None]:
    """When ffmpeg's transfer fails, learn the media host's answer (``refusal``: a 403
    or 429, or None): a block of the source is raised as such, instead of an anonymous
    ffmpeg exit code."""
    import yt_dlp

    try:
        yield
    except yt_dlp.utils.DownloadError as exc:
        if re.search(r"ffmpeg exited with code 8\b", str(exc)):  # 8: an HTTP error answered
            status = refusal()
            if status:
                raise _Failed(
                    f"the media host answered HTTP Error {status} to a ranged request ({exc})"
                ) from exc
        raise


def _media_refusal(ydl: Any, formats: list[dict[str, Any]]) -> int | None:
    """The first 403/429 the media host gives a one-byte ranged request for ``formats``,
    asked as ffmpeg asked (same URL and headers; yt-dlp's proxy and cookies)."""
    from yt_dlp.networking import Request
    from yt_dlp.networking.exceptions import HTTPError, RequestError

    for f in formats:
        headers = {**(f.get("http_headers") or {}), "Range": "bytes=0-0"}
        try:
            request = Request(f["url"], headers=headers, extensions={"timeout": _PROBE_TIMEOUT})
            ydl.urlopen(request).close()
        except HTTPError as exc:
            exc.close()
            if exc.status in (403, 429):
                return int(exc.status)
        except (RequestError, OSError, ValueError):
            return None  # no answer, or no URL to ask: the transfer's own classification stands
    return None


# The host has just answered ffmpeg: an answer that takes longer is no answer.
_PROBE_TIMEOUT = 5.0


@contextlib.contextmanager
def _relayed(ydl: Any, info: dict[str, Any]) -> Iterator[tuple[dict[str, Any], _MediaRelay]]:
    """``info`` with every media URL behind a loopback relay (``_MediaRelay``), and the
    relay (its record of the media host's refusals), for the transfers made inside: the
    cookies reach the media host without being on ffmpeg's command line. yt-dlp hands
    ffmpeg a URL's cookies as ``-cookies NAME=VALUE…`` (downloader/external.py, FFmpegFD),
    readable by every user in /proc/*/cmdline, and ffmpeg 9.0.2 takes no protocol option
    from a file (``-/cookies FILE``: "Unrecognized option '/cookies'"; ``-/`` covers
    ffmpeg's own options only). Public API only: the formats' URLs swapped for the
    relay's, ``process_ie_result`` to select and download; the relay fetches with
    ``ydl.urlopen``, so the jar (rotations written back to the private copy on close),
    headers and proxy are yt-dlp's own. Formats of other protocols (HLS, DASH manifests)
    would have ffmpeg fetch their segments directly, with the cookies on its command
    line: they are left out."""
    from yt_dlp.cookies import YoutubeDLCookieJar

    # The cookies move to the relay's own jar for the transfer: yt-dlp gives ffmpeg the
    # cookies its jar holds for a URL, and the relay's URL (127.0.0.1) may match one.
    jar = YoutubeDLCookieJar()
    for cookie in ydl.cookiejar:
        jar.set_cookie(cookie)
    ydl.cookiejar.clear()
    try:
        with _MediaRelay(ydl, jar) as relay:
            yield _relayed_info(info, relay), relay
    finally:
        for cookie in jar:  # with what the media host set: saved to the private copy on close
            ydl.cookiejar.set_cookie(cookie)


def _relayed_info(info: dict[str, Any], relay: _MediaRelay) -> dict[str, Any]:
    def relayable(f: dict[str, Any]) -> bool:
        url, protocol = f.get("url") or "", f.get("protocol") or "https"
        return bool(re.match(r"https?://", url)) and protocol in ("http", "https")

    info = dict(info)
    formats = info.get("formats")
    if formats:
        info["formats"] = [{**f, "url": relay.url_for(f["url"])} for f in formats if relayable(f)]
    elif relayable(info):
        info["url"] = relay.url_for(info["url"])
    if not info.get("formats") and not info.get("url", "").startswith(relay.base):
        raise _Failed(
            "no format can be fetched without the cookies on ffmpeg's command line "
            "(only HLS/DASH manifests, whose segments ffmpeg would fetch itself)"
        )
    return info


# Hop-by-hop and transport headers are the relay's own, never forwarded (RFC 9110 7.6.1).
_HOP_HEADERS = frozenset(
    {"host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
    | {"cookie"}  # the relay's jar decides which cookies go where
)


class _MediaRelay:
    """A loopback HTTP server, alive for one attempt, that fetches each registered URL
    (behind an unguessable path) with ``ydl.urlopen``: Range and ffmpeg's headers pass
    through, the status, length and range come back, and an upstream failure mid-body
    cuts ffmpeg's connection (``-xerror`` then fails the transfer, as it would have)."""

    def __init__(self, ydl: Any, jar: Any) -> None:
        import threading
        from http.server import ThreadingHTTPServer

        self.ydl, self.jar = ydl, jar
        self.targets: dict[str, str] = {}
        self.refused: int | None = None  # the media host's last 403/429
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def refusal(self) -> int | None:
        """The media host's last 403/429 (None: none since ``forget``)."""
        return self.refused

    def forget(self) -> None:
        self.refused = None

    def url_for(self, url: str) -> str:
        import secrets

        token = secrets.token_urlsafe(18)
        self.targets[token] = url
        return f"{self.base}{token}"

    def __enter__(self) -> _MediaRelay:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type:
        from http.server import BaseHTTPRequestHandler

        from yt_dlp.networking import Request
        from yt_dlp.networking.exceptions import HTTPError, RequestError

        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._relay("GET")

            def do_HEAD(self) -> None:
                self._relay("HEAD")

            def _relay(self, method: str) -> None:
                target = relay.targets.get(self.path.lstrip("/"))
                if target is None:
                    return self._status(404)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                headers["Accept-Encoding"] = "identity"  # lengths and ranges are of the bytes
                try:
                    request = Request(
                        target, headers=headers, method=method, extensions={"cookiejar": relay.jar}
                    )
                    response = relay.ydl.urlopen(request)
                except HTTPError as exc:
                    exc.close()
                    if exc.status in (403, 429):
                        relay.refused = exc.status
                    return self._status(exc.status)
                except (RequestError, OSError):
                    return self._status(502)
                with contextlib.closing(response):
                    self.send_response(response.status)
                    for name in ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges"):
                        if response.headers.get(name):
                            self.send_header(name, response.headers[name])
                    self.end_headers()
                    if method == "HEAD":
                        return None
                    try:
                        while chunk := response.read(64 * 1024):
                            self.wfile.write(chunk)
                    except (RequestError, OSError):
                        self.close_connection = True  # ffmpeg sees the transfer cut, not a short file
                return None

            def _status(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


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
) -> Downloaded:
    """Fetch ``[task.start, task.end or start + clip_seconds]`` of ``task.source`` into
    ``workdir``. Raises ``DownloadError`` when the error is permanent or transient
    attempts run out. With a ``governor`` (``avfusion.governor``) every attempt waits
    for its turn on one of the job's egress addresses (``egress_pool``: the proxies,
    or this node's address), goes out by the one granted and reports its outcome
    against it; ``SourceBlocked`` passes through, and is raised when YouTube says the
    account's cookies are no longer valid (the job must stop). Without a governor the
    attempts take the pool's proxies in turn."""
    from avfusion.governor import BLOCK_KINDS, PROXY_FAULT, wait_for_turn

    end = task.end if task.end is not None else task.start + clip.clip_seconds
    pool = egress_pool(cfg)
    names = list(pool)
    redact = download_redactor(cfg)
    logger = _RecordingLogger(redact)
    first = random.randrange(len(names))
    for attempt in range(1, cfg.max_attempts + 1):
        if governor is not None:
            egress = wait_for_turn(governor, names, sleep)
        else:
            egress = names[(first + attempt - 1) % len(names)]
        proxy = pool[egress]
        opts = ydl_options(replace(cfg, proxy=proxy, proxies=()), task.start, end, workdir)
        again = _TransferRetries(cfg, task.source, proxy, egress, governor, sleep)
        window = (
            _Window(task.start, end, cfg.socket_timeout, cfg.request_size or _CHUNK)
            if cfg.fetch == "pyav"
            else None
        )
        try:
            path = _attempt(task.source, opts, workdir, logger, again, window)
        except _Failed as exc:
            stop_if_cookies_rejected(cfg, logger.warnings, governor, egress)
            kind, transient, message = again.diagnosis(str(exc))
            message = redact(message)
            if governor is not None:
                governor.report(egress, kind, clip=task.source)
            if not transient or attempt == cfg.max_attempts:
                raise DownloadError(kind, transient, message, attempt, logger.warnings) from None
            if governor is None or kind not in (*BLOCK_KINDS, PROXY_FAULT):  # the governor's wait
                sleep(_backoff(cfg, attempt))
            continue
        stop_if_cookies_rejected(cfg, logger.warnings, governor, egress)
        if governor is not None:
            governor.report(egress, None)
        return Downloaded(path, attempt, logger.warnings)
    raise AssertionError("unreachable")


def _diagnosis(message: str, proxy: str | None, source: str, cfg: DownloadConfig) -> tuple[str, bool, str]:
    """A failed attempt's (kind, transient, message): ``classify``, except that a block
    or a failure the proxy may have caused, seen through a proxy that itself refuses
    this job, is the proxy's fault."""
    from avfusion.governor import BLOCK_KINDS

    kind, transient = classify(message)
    if proxy and (kind in BLOCK_KINDS or kind in _PROXY_SUSPECT_KINDS):
        refusal = proxy_refusal(proxy, source, min(cfg.socket_timeout, 10.0))
        if refusal:
            return "proxy_error", True, f"{refusal} (the download said: {message})"
    return kind, transient, message


class _TransferRetries:
    """An attempt's ``again``: whether a failed transfer is tried again with the formats
    in hand. Only for a fault of the transfer (not a block, not the proxy's), at most
    ``transfer_retries`` times, and on the same egress: the format URLs are bound to the
    address that extracted them. Each retry is a media request like any other, so with a
    governor it reports the failure and takes a grant on that egress; one blocked since,
    or held longer than ``backoff_max``, ends the attempt instead. Remembers each failure's
    diagnosis, so the attempt's last failure asks a proxy about itself only once."""

    def __init__(
        self,
        cfg: DownloadConfig,
        source: str,
        proxy: str | None,
        egress: str,
        governor: GovernorClient | None,
        sleep: Callable[[float], None],
    ) -> None:
        self.cfg, self.source, self.proxy, self.egress = cfg, source, proxy, egress
        self.governor, self.sleep = governor, sleep
        self.transfers = 0
        self._diagnosed: dict[str, tuple[str, bool, str]] = {}

    def diagnosis(self, message: str) -> tuple[str, bool, str]:
        message = _clean(message)
        if message not in self._diagnosed:
            self._diagnosed[message] = _diagnosis(message, self.proxy, self.source, self.cfg)
        return self._diagnosed[message]

    def __call__(self, message: str) -> bool:
        cfg = self.cfg
        if self.transfers >= cfg.transfer_retries or _NO_PACKETS in message:
            return False  # no packets: the host's 403/429 after the headers, not a cut
        kind, _, _ = self.diagnosis(message)
        if kind not in _TRANSFER_KINDS:
            return False
        if self.governor is None:
            self.transfers += 1
            self.sleep(_backoff(cfg, self.transfers))
            return True
        self.governor.report(self.egress, kind, clip=self.source)
        while True:
            verdict, wait = self.governor.acquire_again(self.egress)
            if verdict == "go":
                self.transfers += 1
                return True
            if verdict != "wait" or wait > cfg.backoff_max:
                return False
            self.sleep(min(wait, 2.0))


def _backoff(cfg: DownloadConfig, retry: int) -> float:
    """Exponential backoff with full jitter, which keeps retries apart."""
    return min(cfg.backoff_max, cfg.backoff_base * 2 ** (retry - 1)) * random.uniform(0.5, 1.0)


# Faults of the transfer itself (the media host's 5xx, a reset, a stall, a cut body):
# the formats extracted are still good.
_TRANSFER_KINDS = ("server_error", "timeout", "connection", "truncated", "stream_error")


def stop_if_cookies_rejected(
    cfg: DownloadConfig, warnings: list[str], governor: GovernorClient | None, node: str
) -> None:
    """Raise ``SourceBlocked`` (and stop the governor) on yt-dlp's warning that the
    account's cookies are no longer valid (extractor/youtube/_base.py): every further
    request would be a guest's, so the job stops until the cookies are exported again."""
    from avfusion.governor import COOKIES_INVALID, SourceBlocked

    if cfg.cookies and any(_COOKIES_REJECTED.search(w) for w in warnings):
        if governor is not None:
            governor.report(node, COOKIES_INVALID)
        raise SourceBlocked(COOKIES_INVALID, 0.0)


_COOKIES_REJECTED = re.compile(r"account cookies are no longer valid", re.I)


# Failures a proxy's own refusal can hide behind: a 403 or 5xx the proxy answered to a
# plain request reads like the origin's, and ffmpeg's exit code (8 for any HTTP error,
# 145 for a refused connection) does not say who refused.
_PROXY_SUSPECT_KINDS = ("server_error", "connection", "stream_error")  # and every block


def proxy_refusal(proxy: str, source: str, timeout: float) -> str | None:
    """Whether the HTTP proxy itself refuses this job: one CONNECT to ``source``'s host
    on port 443 (a tunnel every proxy allows by default; no request reaches the origin,
    the tunnel is closed unused), with the proxy's credentials. A refused connection,
    403 or 407 → a one-line reason (no credentials in it); a tunnel, any other answer
    or no answer → None (the failure stays the origin's)."""
    import base64
    import socket
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host = urlsplit(source).hostname
    if parts.scheme != "http" or not parts.hostname or not host:
        return None  # an https proxy needs TLS first; preflight refuses the rest
    where = f"{parts.hostname}:{parts.port or 80}"
    target = f"[{host}]:443" if ":" in host else f"{host}:443"
    auth = ""
    if parts.username is not None:
        token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode())
        auth = f"Proxy-Authorization: Basic {token.decode()}\r\n"
    try:
        with socket.create_connection((parts.hostname, parts.port or 80), timeout=timeout) as sock:
            sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n".encode())
            status = sock.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
    except ConnectionRefusedError:
        return f"the proxy {where} refused the connection"
    except OSError:
        return None
    match = re.match(r"HTTP/\d(?:\.\d)? (403|407)\b ?(.*)", status)
    if match:
        return f"the proxy {where} answered {match[1]} {match[2]} to CONNECT {target}".rstrip()
    return None


COOKIES_MAX_BYTES = 1 << 20  # a browser's cookies.txt is kilobytes; more is not a cookie file


def download_redactor(cfg: DownloadConfig, *secrets: str) -> Redactor:
    """The redaction filter for what these download settings may leak: patterns, every
    cookie value in the cookies file, the proxy's password (as given and as typed), and
    ``secrets`` the caller knows of (the job's AWS secret key)."""
    from urllib.parse import unquote, urlsplit

    from avfusion import storage

    redact = Redactor(secrets)
    if cfg.cookies:
        with contextlib.suppress(OSError, UnicodeDecodeError):  # unreadable: the attempt reports it
            text = storage.read_small(cfg.cookies, COOKIES_MAX_BYTES).decode()
            redact.add(*cookie_values(text))
            redact.add(*cookiejar.values(cfg.cookies, sanitise_cookies(text)[0]))  # what the host set since
    for proxy in cfg.pool:
        try:
            password = urlsplit(proxy if "://" in proxy else f"http://{proxy}").password
        except ValueError:  # a malformed URL: preflight refuses it; its text may still hold a secret
            redact.add(proxy)
        else:
            redact.add(password, unquote(password or ""))
    return redact


def sanitise_cookies(text: str) -> tuple[str, list[str]]:
    """``text`` (a Netscape cookies.txt) without the lines yt-dlp or http.cookiejar would
    refuse, and a ``cookies file line N: reason`` per dropped line, with no value in it.
    yt-dlp prints a refused line whole (cookies.py, YoutubeDLCookieJar.load:
    ``write_string(f'WARNING: skipping cookie file entry due to {e}: {line!r}')``)
    straight to stderr, past any logger, once per attempt; http.cookiejar's
    MozillaCookieJar._really_load fails the whole jar with the line in its message when
    a domain's leading dot and its include-subdomains flag disagree. The checks are
    theirs: 7 tab-separated fields, a numeric expiry, the flag matching the dot."""
    kept, problems = [], []
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        body = line.removeprefix("#HttpOnly_")
        if body.startswith("#") or not body.strip():
            kept.append(line)
            continue
        fields = body.rstrip("\r\n").split("\t")
        if len(fields) != 7:
            reason = f"{len(fields)} tab-separated fields where a cookie has 7"
            if body.lstrip()[:1] in ("[", "{", '"'):
                reason += " (cookies.txt must be Netscape formatted, not JSON)"
        elif fields[4] and not re.fullmatch(r"[0-9]+(?:\.[0-9]+)?", fields[4]):
            reason = "the expiry (field 5) is not a number"
        elif (fields[1] == "TRUE") != fields[0].startswith("."):
            reason = "the include-subdomains flag (field 2) disagrees with the domain's leading dot"
        else:
            kept.append(line)
            continue
        problems.append(f"cookies file line {number}: {reason}; line skipped")
    return "".join(kept), problems


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
