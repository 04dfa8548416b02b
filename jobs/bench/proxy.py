"""A small threaded HTTP proxy for tests: CONNECT tunnels and absolute-URI forwarding.

Its outgoing connections come from ``source_host`` (127.0.0.2 by default, a different
loopback address from the clients'), so an origin can tell the proxy's connections
from direct ones by peer address. ``requests`` lists what it forwarded (method and
target) and ``bytes_in`` counts the bytes it relayed back to clients.

``refuse(status, after=n)`` makes the proxy itself answer ``status`` (403, 407, 502,
503, …) to every request after the first ``n``, CONNECT or plain, as a proxy that denies
a destination, wants credentials or cannot reach upstream does; ``headers`` lists the
request headers of each request (a test sees ``Proxy-Authorization`` arrive).
"""

from __future__ import annotations

import select
import socket
import threading
from http import HTTPStatus
from socketserver import BaseRequestHandler, ThreadingTCPServer
from urllib.parse import urlsplit


class HttpProxy:
    def __init__(self, host: str = "127.0.0.1", source_host: str = "127.0.0.2"):
        self.source_host = source_host
        self.requests: list[tuple[str, str]] = []
        self.bytes_in = 0
        self.headers: list[dict[str, str]] = []
        self.refusal: tuple[int, int] | None = None  # (status, after n requests)
        self.lock = threading.Lock()
        ThreadingTCPServer.allow_reuse_address = True
        self.server = ThreadingTCPServer((host, 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def refuse(self, status: int, after: int = 0) -> None:
        self.refusal = (status, after)

    def __enter__(self) -> HttpProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        proxy = self

        class Handler(BaseRequestHandler):
            def handle(self):
                client = self.request
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                line, _, rest = head.partition(b"\r\n")
                method, target, version = line.decode("latin-1").split(" ", 2)
                with proxy.lock:
                    proxy.requests.append((method, target))
                    proxy.headers.append(
                        dict(
                            h.decode("latin-1").split(": ", 1)
                            for h in rest.split(b"\r\n\r\n")[0].split(b"\r\n")
                            if b": " in h
                        )
                    )
                    refused = proxy.refusal and len(proxy.requests) > proxy.refusal[1]
                if refused and proxy.refusal:
                    return self._answer(proxy.refusal[0])
                if method == "CONNECT":
                    host, _, port = target.rpartition(":")
                    try:
                        upstream = self._connect(host, int(port))
                    except OSError:  # as real proxies do when the destination is unreachable
                        return self._answer(502)
                    client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    leftover = head.split(b"\r\n\r\n", 1)[1]
                else:
                    parts = urlsplit(target)
                    upstream = self._connect(parts.hostname, parts.port or 80)
                    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                    # One request per connection (a proxy may close after each): the
                    # relay below would not see a second request's absolute URI.
                    fields, _, body = rest.partition(b"\r\n\r\n")
                    headers = [
                        h
                        for h in fields.split(b"\r\n")
                        if h and not h.lower().startswith((b"proxy-", b"connection:", b"keep-alive:"))
                    ]
                    leftover = (
                        f"{method} {path} {version}\r\n".encode()
                        + b"\r\n".join([*headers, b"Connection: close"])
                        + b"\r\n\r\n"
                        + body
                    )
                try:
                    if leftover:
                        upstream.sendall(leftover)
                    self._relay(client, upstream)
                finally:
                    upstream.close()

            def _answer(self, status):
                reason = HTTPStatus(status).phrase
                extra = b'Proxy-Authenticate: Basic realm="proxy"\r\n' if status == 407 else b""
                body = f"{status} {reason} (from the proxy)\n".encode()
                self.request.sendall(
                    f"HTTP/1.1 {status} {reason}\r\n".encode()
                    + extra
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )

            def _connect(self, host, port):
                sock = socket.create_connection((host, port), source_address=(proxy.source_host, 0))
                return sock

            def _relay(self, client, upstream):
                sockets = [client, upstream]
                while True:
                    readable, _, _ = select.select(sockets, [], [], 30)
                    if not readable:
                        return
                    for s in readable:
                        try:
                            data = s.recv(65536)
                        except OSError:
                            return
                        if not data:
                            return
                        try:
                            (upstream if s is client else client).sendall(data)
                        except OSError:  # the other side hung up (ffmpeg has what it wanted)
                            return
                        if s is upstream:
                            with proxy.lock:
                                proxy.bytes_in += len(data)

        return Handler
