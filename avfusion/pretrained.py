"""torchvision's ImageNet ResNet-18 weights (``--video-weights imagenet``): fetched through
torch.hub into torch's hub cache, hash-checked, and what a checkpoint records of them.

The file is torchvision's ``ResNet18_Weights.IMAGENET1K_V1`` (``resnet18-f37072fd.pth``).
Its name carries the first hex digits of its SHA-256: torch.hub checks them while it
downloads (into a temp file beside the cache entry, moved into place only when the hash
matches and removed otherwise), and :func:`cached` checks them again on a cached file.

Offline (no DNS, no route, refused, reset, an HTTP error, no answer within the timeout)
the weights are *unavailable*: the caller warns and starts from random weights, and the
record says so. Wrong bytes (a hash mismatch, downloaded or cached) are a
:class:`WeightsError`: the network delivered something that is not the file (a captive
portal's page, a broken proxy or mirror, a body cut short: urllib does not compare it
with its Content-Length), and a run that fell back to random weights would be found out
hours later, while the fix (run again, delete the file) takes seconds.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from avfusion import storage

# Per socket operation (connect, each read): a stalled server is given up on, not waited for.
DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation
DOWNLOAD_DEADLINE_S = 900.0  # the whole download (45 MB at 50 KB/s); a server that trickles is given up
MAX_DOWNLOAD_BYTES = 256 << 20  # the file is 45 MB: a body past this is not it
_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's HASH_REGEX: NAME-<sha256 prefix>.EXT
# What "the network did not deliver the file" raises through urllib: DNS, route, refusal
# and HTTP errors (URLError), no answer in time, a reset, a connection cut mid-body.
_UNAVAILABLE = (URLError, TimeoutError, ConnectionError, http.client.HTTPException)
_timeout_lock = threading.Lock()

IMAGENET = "imagenet"
RANDOM = "random"
UNAVAILABLE = "random (imagenet unavailable)"
NOT_READ = "random (not read: replaced by rank 0's weights or the checkpoint's)"
FILE = "file"


class WeightsError(OSError):
    """A weights file's bytes are not those its name promises; the message says what to do."""


@dataclass(frozen=True, kw_only=True)
class VideoInit:
    """Where a video encoder's starting weights came from, as a checkpoint records it
    (``video_init``): a checkpoint never claims ImageNet weights it did not start from."""

    requested: str  # the video_weights value: imagenet | none | a path or URL
    loaded: str  # IMAGENET | FILE | RANDOM | UNAVAILABLE | NOT_READ
    source: str | None = None  # the URL or path the weights were (to be) read from
    sha256: str | None = None  # of the file's bytes, when weights were loaded
    reason: str | None = None  # why imagenet was unavailable

    def record(self) -> dict[str, str | None]:
        return asdict(self)


@dataclass(frozen=True)
class CacheState:
    """What torch's hub cache holds for a weights URL."""

    file: str  # <hub dir>/checkpoints/<the URL's file name>
    status: (
        str  # "ok" | "missing" | "corrupt" (its SHA-256 does not start with the name's hash, or not a file)
    )
    sha256: str | None = None


def imagenet_url() -> str:
    """torchvision's URL of its ImageNet ResNet-18 weights."""
    from torchvision.models import ResNet18_Weights

    return str(ResNet18_Weights.IMAGENET1K_V1.url)


def cache_file(url: str) -> str:
    """Where torch.hub keeps the file at ``url``: ``<hub dir>/checkpoints/<its name>``,
    the hub dir being ``torch.hub.set_dir``'s, else ``$TORCH_HOME/hub`` (torch reads it)."""
    import torch.hub

    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlsplit(url).path))


def hash_prefix(url: str) -> str:
    """The SHA-256 prefix in the file name of ``url`` (``resnet18-f37072fd.pth``: f37072fd)."""
    found = _HASH_IN_NAME.search(os.path.basename(urlsplit(url).path))
    if not found or len(found.group(1)) < 8:
        raise ValueError(f"{url}: the file name carries no SHA-256 prefix (NAME-<8+ hex digits>.pth)")
    return found.group(1)


def cached(url: str | None = None) -> CacheState:
    """The cache entry for ``url`` (default torchvision's) and whether its bytes match the
    hash in its name; reads the file (45 MB), never the network."""
    url = url or imagenet_url()
    file = cache_file(url)
    kind = storage.local_kind(file)
    if kind == "missing":
        return CacheState(file, "missing")
    if kind != "file":  # a folder, a FIFO (reading it would block), unreadable: no weights in it
        return CacheState(file, "corrupt", f"not a readable file ({kind})")
    digest = storage.sha256(file)
    return CacheState(file, "ok" if digest.startswith(hash_prefix(url)) else "corrupt", digest)


def fetch_imagenet(
    url: str | None = None,
    *,
    timeout_s: float = DOWNLOAD_TIMEOUT_S,
    deadline_s: float = DOWNLOAD_DEADLINE_S,
    progress: bool = False,
) -> tuple[dict[str, Any] | None, VideoInit]:
    """(state dict, record) of torchvision's ImageNet ResNet-18 from torch's hub cache,
    downloaded into it first when absent. ``url``: where from (default torchvision's; a
    mirror or a test server keeps the file name and its hash). The state is None, and the
    record says why, when the file cannot be downloaded; :class:`WeightsError` when its
    bytes do not match the hash in its name."""
    import torch.hub

    url = url or imagenet_url()
    prefix = hash_prefix(url)
    state = cached(url)
    if state.status == "missing":
        storage.makedirs(os.path.dirname(state.file))
        print(f"downloading ImageNet ResNet-18 weights {url} to {state.file}", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        _remove_stale_partials(state.file)
        try:
            with _bounded(timeout_s, deadline_s):
                # temp file beside the entry, hash-checked, then moved into place (or removed)
                torch.hub.download_url_to_file(url, state.file, prefix, progress=progress)
        except _UNAVAILABLE as exc:
            if isinstance(exc, HTTPError):
                exc.close()
            return None, VideoInit(
                requested=IMAGENET, loaded=UNAVAILABLE, source=url, reason=_why(exc, timeout_s)
            )
        except RuntimeError as exc:  # torch.hub's hash check (the one RuntimeError it raises)
            raise WeightsError(
                f"the ImageNet ResNet-18 weights downloaded from {url} are corrupt: {exc} (the bytes "
                f"were altered or cut short on the way); nothing was cached: run again, or pass "
                f"--video-weights PATH to a good copy"
            ) from None
        state = cached(url)
        print(f"downloaded {state.file} in {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    if state.status == "corrupt":
        if state.sha256 and state.sha256.startswith("not a readable file"):
            raise WeightsError(f"{state.file} is {state.sha256}: remove it (it is downloaded again)")
        raise WeightsError(
            f"{state.file} is corrupt: its SHA-256 {(state.sha256 or '')[:16]}... does not start with "
            f"{prefix}, the hash in its name; delete it (it is downloaded again) or pass --video-weights PATH"
        )
    return storage.load_torch(state.file), VideoInit(
        requested=IMAGENET, loaded=IMAGENET, source=url, sha256=state.sha256
    )


@contextlib.contextmanager
def _bounded(timeout_s: float, deadline_s: float) -> Iterator[None]:
    """torch.hub's download, bounded: its ``urlopen`` takes no timeout, so its socket gets
    the process default (None: wait forever) unless set, which is done around the download
    only; and its response is wrapped so that the whole download has a deadline (each read
    arriving in time does not bound a server that sends a byte a second) and a size cap
    (a server may stream without end)."""
    import torch.hub

    with _timeout_lock:
        previous, opener = socket.getdefaulttimeout(), torch.hub.urlopen
        socket.setdefaulttimeout(timeout_s)
        deadline = time.monotonic() + deadline_s
        torch.hub.urlopen = lambda req, *a, **k: _Bounded(opener(req, *a, **k), deadline, deadline_s)  # type: ignore[assignment]
        try:
            yield
        finally:
            torch.hub.urlopen = opener
            socket.setdefaulttimeout(previous)


class _Overdue(TimeoutError):
    """The whole download outlasted its deadline."""


class _Bounded:
    """A urllib response whose reads stop at a deadline and at ``MAX_DOWNLOAD_BYTES``."""

    def __init__(self, response: Any, deadline: float, deadline_s: float):
        self._response, self._deadline, self._deadline_s, self._seen = response, deadline, deadline_s, 0
        length = response.info().get("Content-Length")
        if length and length.strip().isdigit() and int(length) > MAX_DOWNLOAD_BYTES:
            response.close()
            raise WeightsError(f"the server announces {int(length)} bytes for a 45 MB file: not the weights")

    def __enter__(self) -> _Bounded:
        return self

    def __exit__(self, *exc: object) -> None:
        self._response.close()

    def info(self) -> Any:
        return self._response.info()

    def read(self, n: int = -1) -> bytes:
        if time.monotonic() > self._deadline:
            raise _Overdue(f"the download took longer than {self._deadline_s:g} s")
        # read1: what one receive brings (torch.hub loops until EOF), so a server that sends a
        # byte at a time cannot hold a read past the deadline
        block = self._response.read1(n) if n > 0 else self._response.read()
        self._seen += len(block)
        if self._seen > MAX_DOWNLOAD_BYTES:
            raise WeightsError(f"the server sent more than {MAX_DOWNLOAD_BYTES >> 20} MiB for a 45 MB file")
        return bytes(block)


def _remove_stale_partials(file: str) -> None:
    """torch.hub's temp files (``FILE.<hex>.partial``) left by a killed download: removed
    once older than any live download can be."""
    folder = os.path.dirname(file)
    for partial in storage.list_files(folder, os.path.basename(file) + ".*.partial"):
        with contextlib.suppress(OSError):
            if time.time() - os.path.getmtime(partial) > 2 * DOWNLOAD_DEADLINE_S:
                storage.remove(partial)


def _why(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, _Overdue):
        return str(exc)
    if isinstance(exc, HTTPError):
        return f"HTTP {exc.code} {str(exc.reason).splitlines()[0]}"
    if isinstance(exc, URLError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    if isinstance(exc, socket.gaierror):
        return f"host not found ({exc.strerror or exc})"
    if isinstance(exc, URLError):
        return str(exc.reason)
    return str(getattr(exc, "strerror", None) or exc or type(exc).__name__)
