"""``jobs/bench/proxy.py``'s proxy behind HTTP Basic proxy authentication.

A request without the right ``Proxy-Authorization`` is answered ``407`` with a
``Proxy-Authenticate: Basic`` challenge (ffmpeg sends its credentials only after one,
yt-dlp's HTTP client up front). ``accepted`` and ``refused`` count the two outcomes,
so a test sees that the credentials really reached the proxy.
"""

from __future__ import annotations

import base64
import socket
import time

from jobs.bench.proxy import HttpProxy


class AuthProxy(HttpProxy):
    def __init__(self, user: str, password: str, host: str = "127.0.0.1", source_host: str = "127.0.0.2"):
        self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.accepted = 0
        self.refused = 0
        super().__init__(host, source_host)

    def url_with(self, user: str, password: str) -> str:
        return self.url.replace("http://", f"http://{user}:{password}@", 1)

    def _handler(self):
        proxy = self
        base = super()._handler()

        class Handler(base):
            def handle(self):
                head = self._peek_head()
                if head is None:
                    return
                given = [
                    line.split(":", 1)[1].strip()
                    for line in head.split("\r\n")[1:]
                    if line.lower().startswith("proxy-authorization:")
                ]
                with proxy.lock:
                    ok = given == [proxy.expected]
                    proxy.accepted += ok
                    proxy.refused += not ok
                if not ok:
                    self.request.sendall(
                        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                        b'Proxy-Authenticate: Basic realm="test"\r\n'
                        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    return
                super().handle()  # reads the same bytes again: they were only peeked

            def _peek_head(self) -> str | None:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    data = self.request.recv(65536, socket.MSG_PEEK)  # the tunnel reads them after us
                    if not data:
                        return None
                    if b"\r\n\r\n" in data:
                        return data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
                    time.sleep(0.01)
                return None

        return Handler
