"""A loopback HTTP server for media that honours Range, with per-path faults.

yt-dlp hands section downloads to ffmpeg, which seeks with Range requests: a server
without Range support (``python -m http.server``) cannot be used. Faults reproduce
what real hosts do: 404/403, 429 or 500 for the first N requests, a response slower
than the client's timeout, a connection reset mid-body, a body shorter than its
Content-Length. ``requests`` counts requests per path so tests can see retries;
``bytes_sent`` counts the body bytes the server got into each connection per path
(written in 16 KiB chunks into a 64 KiB send buffer, so a client that stops reading
early is charged at most about the buffer beyond what it took). ``log`` records every
request (time, path, peer address, headers) and ``bytes_by_peer`` the body bytes per
client connection, so tests see cookies sent, spacing between downloads and which
hosts (a proxy, or the client itself) fetched the media. ``block_after`` turns the
origin into a blocked one after N requests: 429 with Retry-After, then 403, then
healthy again (``block_plan``). ``require_cookie`` answers 403 to any request whose
``Cookie`` header lacks that ``NAME=VALUE``, as a media host behind a login does;
``rotate_cookie`` (a name) sets ``NAME=rot-N`` on the response to the N-th request, as
hosts that rotate a session cookie do. A plan's status ``"no_formats"`` answers 200 with
an HLS playlist that lists no stream, so real yt-dlp says "No video formats found!", as
a blocked YouTube source hears on every video. ``refuse_ranged(status, n)`` answers
``status`` to the next ``n`` requests that carry a Range header (the media transfer,
not the extractor's first look), as YouTube's media host blocks. ``limit_per_peer(n,
window)`` answers 429 to a client address that already had ``n`` requests served in the
last ``window`` seconds, as a host that rate-limits per IP does (refused requests are
not counted: an address that rests recovers). ``head_status`` answers every HEAD with
that status, as hosts that refuse HEAD (405) do.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class RangeServer:
    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0):
        self.root = Path(root)
        self.faults: dict[str, tuple[str, int]] = {}
        self.requests: Counter = Counter()
        self.ranges: dict[str, list[str]] = {}
        self.bytes_sent: Counter = Counter()
        self.sent_by_request: dict[str, list[int]] = {}  # per path, body bytes per request in order
        self.log: list[dict] = []  # {"t", "method", "path", "peer", "headers", "status"} per request
        self.bytes_by_peer: Counter = Counter()  # body bytes per client (host, port)
        self.block_plan: list[tuple[int | str, int]] = []  # [(status, n_requests)], applied in order
        self.block_after: int | None = None
        self.require_cookie: str | None = None
        self.rotate_cookie: str | None = None
        self.ranged_refusals: list[int] = []  # statuses for the next ranged requests, in order
        self.head_status: int | None = None  # answer every HEAD with this status (a host that refuses HEAD)
        self.content_type = "video/mp4"  # of every file served but a DASH manifest
        self.peer_limit: tuple[int, float] | None = None  # (requests, seconds) per client address
        self.served_by_peer: dict[str, list[float]] = {}  # times of the requests served, per address
        self.served_total = 0
        # Paths answered with a playlist of no streams: yt-dlp's generic extractor fetches the
        # playlist again, and that second request gets it too (one extraction, one answer).
        self.playlist_refetch: set[str] = set()
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, client_address: None  # type: ignore[method-assign]  # clients that hang up early
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}/{name}" if port == 80 else f"http://{host!s}:{port}/{name}"

    def block(self, after: int, plan: list[tuple[int | str, int]]) -> None:
        """After ``after`` requests, answer the next requests per ``plan``: e.g.
        ``[(429, 5), (403, 5)]`` = five 429s then five 403s, then healthy again."""
        self.block_after, self.block_plan = after, list(plan)

    def refuse_ranged(self, status: int, n: int) -> None:
        self.ranged_refusals = [status] * n

    def limit_per_peer(self, n: int, window: float) -> None:
        self.peer_limit = (n, window)

    def _peer_limited(self, peer: str, now: float) -> bool:
        if self.peer_limit is None:
            return False
        n, window = self.peer_limit
        served = self.served_by_peer.setdefault(peer, [])
        if sum(t > now - window for t in served) >= n:
            return True
        served.append(now)
        return False

    def _blocked_status(self) -> int | str | None:
        if self.block_after is None or self.served_total <= self.block_after:
            return None
        i = self.served_total - self.block_after
        for status, n in self.block_plan:
            if i <= n:
                return status
            i -= n
        return None

    def set_fault(self, name: str, kind: str, count: int = 1) -> None:
        """kind: 404, 403, 429_then_ok, 500_then_ok, slow, reset, truncated."""
        self.faults[name] = (kind, count)

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                name = self.path.lstrip("/").split("?")[0]
                blocked: int | str | None
                with server.lock:
                    if name in server.playlist_refetch:
                        server.playlist_refetch.discard(name)
                        blocked = "no_formats"
                    else:
                        server.served_total += 1
                        blocked = server._blocked_status()
                        if blocked == "no_formats":
                            server.playlist_refetch.add(name)
                    if not blocked and self.headers.get("Range") and server.ranged_refusals:
                        blocked = server.ranged_refusals.pop(0)
                    if not blocked and server._peer_limited(self.client_address[0], time.time()):
                        blocked = 429
                    if not blocked and head and server.head_status:
                        blocked = server.head_status
                    server.log.append(
                        {
                            "t": time.time(),
                            "method": "HEAD" if head else "GET",
                            "path": name,
                            "peer": self.client_address[:2],
                            "headers": dict(self.headers.items()),
                            "status": blocked,
                        }
                    )
                    server.requests[name] += 1
                    n = server.requests[name]
                    server.ranges.setdefault(name, []).append(self.headers.get("Range", ""))
                    server.sent_by_request.setdefault(name, []).append(0)
                    request_index = len(server.sent_by_request[name]) - 1
                if blocked == "no_formats":
                    return self._playlist_without_streams(head)
                if blocked:
                    assert isinstance(blocked, int)
                    return self._status(blocked, {"Retry-After": "1"} if blocked == 429 else None)
                cookies = [c.strip() for c in self.headers.get("Cookie", "").split(";")]
                if server.require_cookie and server.require_cookie not in cookies:
                    return self._status(403)
                kind, count = server.faults.get(name, ("", 0))
                if kind in ("404", "403"):
                    return self._status(int(kind))
                if kind in ("429_then_ok", "500_then_ok") and n <= count:
                    return self._status(int(kind[:3]), {"Retry-After": "0"})
                if kind == "slow":
                    server.stopping.wait(5.0)
                    return self._status(503)
                path = server.root / name
                if not path.is_file():
                    return self._status(404)
                data = path.read_bytes()
                start, end, status = 0, len(data) - 1, 200
                match = re.match(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
                if match:
                    if match.group(1):
                        start = int(match.group(1))
                        end = int(match.group(2)) if match.group(2) else len(data) - 1
                    else:  # suffix range: the last N bytes
                        start = max(0, len(data) - int(match.group(2)))
                    if start >= len(data):
                        return self._status(416, {"Content-Range": f"bytes */{len(data)}"})
                    end, status = min(end, len(data) - 1), 206
                body = data[start : end + 1]
                self.send_response(status)
                mime = "application/dash+xml" if name.endswith(".mpd") else server.content_type
                self.send_header("Content-Type", mime)
                self.send_header("Accept-Ranges", "bytes")
                if server.rotate_cookie:
                    self.send_header(
                        "Set-Cookie", f"{server.rotate_cookie}=rot-{server.served_total}; Path=/"
                    )
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if head:
                    return
                if kind in ("reset", "truncated"):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if kind == "reset":  # RST instead of FIN
                        self.connection.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    self.close_connection = True
                    self.connection.close()
                    return
                # A small send buffer and chunked writes: what is counted is what the
                # client could have read, not a whole file parked in kernel buffers.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
                try:
                    for i in range(0, len(body), 16 * 1024):
                        chunk = body[i : i + 16 * 1024]
                        self.wfile.write(chunk)
                        with server.lock:
                            server.bytes_sent[name] += len(chunk)
                            server.sent_by_request[name][request_index] += len(chunk)
                            server.bytes_by_peer[self.client_address[:2]] += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # ffmpeg closes as soon as it has the bytes it wanted

            def _playlist_without_streams(self, head: bool) -> None:
                body = b"#EXTM3U\n#EXT-X-VERSION:3\n"
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.apple.mpegurl")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _status(self, code: int, headers: dict | None = None) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler
