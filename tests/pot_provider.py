"""A loopback stand-in for bgutil's PO-token HTTP server (the provider the
bgutil-ytdlp-pot-provider plugin asks): ``GET /ping`` answers its version, ``POST
/get_pot`` a token for the request's content binding. ``seen`` records each request
(method, path, JSON body), so tests see what the real plugin sent."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class PotProvider:
    def __init__(self, version: str = "2.0.2", ping_body: bytes | None = None) -> None:
        self.version, self.ping_body = version, ping_body
        self.seen: list[tuple[str, str, Any]] = []
        self.token = base64.urlsafe_b64encode(bytes(range(64))).decode()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> PotProvider:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _json(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                provider.seen.append(("GET", self.path, None))
                if self.path != "/ping":
                    self.send_error(404)
                    return
                default = json.dumps({"server_uptime": 1.0, "version": provider.version}).encode()
                self._json(provider.ping_body if provider.ping_body is not None else default)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                provider.seen.append(("POST", self.path, body))
                binding = body.get("content_binding")
                self._json(json.dumps({"poToken": provider.token, "contentBinding": binding}).encode())

        return Handler
