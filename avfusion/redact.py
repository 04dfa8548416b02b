"""The one redaction filter: text that may carry a secret passes here before it reaches
a log, a failure record, a stored sample or the terminal.

Two layers, because neither alone is enough. Patterns catch the shapes secrets take in
yt-dlp's, ffmpeg's and botocore's messages (``user:pass@`` in a URL, ``Authorization``
and ``Cookie`` headers, ``-cookies`` arguments, Netscape cookie-file lines, signed
query parameters). Values catch a secret wherever it appears, whatever the shape: the
job registers what it knows to be secret (every cookie value in the cookies file, the
proxy password, the AWS secret key) with ``Redactor.add``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"

# Query parameters that sign or authorise a URL: S3/GCS presigned URLs, YouTube's media
# URLs (sig, signature, lsig, pot: the PO token), OAuth-style tokens.
SIGNED_PARAMS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
        "signature",
        "sig",
        "lsig",
        "pot",
        "token",
        "access_token",
        "id_token",
        "api_key",
        "apikey",
        "key",
        "password",
        "passwd",
        "secret",
        "awsaccesskeyid",
        "policy",
        "auth",
    }
)

_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<user>[^\s/@:]*):(?P<pw>[^\s/@]*)@", re.I)
_HEADER = re.compile(
    r"(?P<name>\b(?:proxy-)?authorization|\bcookie|\bset-cookie|\bx-goog-visitor-id|\bx-amz-security-token)"
    r"(?P<sep>\s*[:=]\s*)(?P<value>[^\r\n]+)",
    re.I,
)
_COOKIES_ARG = re.compile(r"(?P<flag>-cookies\s+)(?P<q>['\"]?)(?P<value>.*?)(?P=q)(?=\s+-|\s*$)", re.M)
# A Netscape cookies.txt line: domain, flag, path, secure, expiry, name, value (tabs).
# yt-dlp echoes a refused line with repr(), so a tab may be the two characters "\\t".
_TAB = r"(?:\t|\\t)"
_COOKIE_LINE = re.compile(
    rf"(?P<head>(?:#HttpOnly_)?[\w.-]+{_TAB}(?:TRUE|FALSE){_TAB}\S*?{_TAB}(?:TRUE|FALSE){_TAB}-?\d*{_TAB}"
    rf"[^\t\r\n\\]*{_TAB})(?P<value>[^\r\n'\"]*)",
    re.I,
)
_QUERY_PARAM = re.compile(r"(?P<sep>[?&;])(?P<name>[^=&\s#]+)=(?P<value>[^&\s#\"']*)")
# AWS access key ids are not secret alone but identify the account.
_AWS_SECRET_ASSIGN = re.compile(r"(?P<name>aws_secret_access_key\s*[=:]\s*)(?P<value>\S+)", re.I)


def redact_patterns(text: str) -> str:
    """``text`` with every secret-shaped part masked; the rest (error kind, host, path,
    parameter names) kept, so the line still says what went wrong."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _HEADER.sub(lambda m: f"{m['name']}{m['sep']}{MASK}", text)
    text = _COOKIES_ARG.sub(lambda m: f"{m['flag']}{m['q']}{MASK}{m['q']}", text)
    text = _COOKIE_LINE.sub(lambda m: f"{m['head']}{MASK}", text)
    text = _AWS_SECRET_ASSIGN.sub(lambda m: f"{m['name']}{MASK}", text)
    return _QUERY_PARAM.sub(
        lambda m: f"{m['sep']}{m['name']}={MASK}" if m["name"].lower() in SIGNED_PARAMS else m[0], text
    )


class Redactor:
    """Pattern redaction plus the exact values this job knows to be secret. Thread-safe;
    values shorter than 4 characters are ignored (masking every ``1`` or ``a`` would
    destroy the message and protects nothing)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: frozenset[str] = frozenset()
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        with self._lock:
            self._values = self._values | {s for s in secrets if s and len(s) >= 4}

    def __reduce__(self) -> tuple[type[Redactor], tuple[tuple[str, ...]]]:
        # Travels to Ray workers with the shard tasks; the lock is per process.
        return Redactor, (tuple(self._values),)

    @property
    def values(self) -> frozenset[str]:
        return self._values

    def __call__(self, text: str) -> str:
        # Longest first: a value that contains another is masked whole.
        for value in sorted(self._values, key=len, reverse=True):
            text = text.replace(value, MASK)
        return redact_patterns(text)


def strip_url_secrets(url: str) -> str:
    """A URL fit to store (a sample's ``source``, a failure's): user info and signed or
    token query parameters removed; anything that is not a URL is returned as given."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = [
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() not in SIGNED_PARAMS
    ]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query), parts.fragment))


def cookie_values(cookies_text: str) -> list[str]:
    """Every cookie value in a Netscape cookies.txt (what ``Redactor.add`` is given for
    ``--cookies``); malformed lines give their last tab-separated field too, since that
    is what yt-dlp echoes when it refuses one."""
    values = []
    for line in cookies_text.splitlines():
        if not line.strip() or (line.startswith("#") and not line.startswith("#HttpOnly_")):
            continue
        fields = line.split("\t")
        value = fields[-1].strip()
        if value:
            values.append(value)
        if len(fields) < 7:  # malformed: the whole line may be a secret pasted wrongly
            values.append(line.strip())
    return values
