"""A real S3-compatible server on loopback for the object-storage tests.

Why moto in server mode (``ThreadedMotoServer``) rather than ``rclone serve s3``: it is a
pip dependency of the test extra (CI gets it from ``pip install -e '.[test]'``, no
system package or binary download), it starts in-process in well under a second on a
port we choose, and it speaks the S3 REST API over real HTTP, so s3fs/botocore, pyarrow
and Ray go through exactly the code paths they use against AWS or MinIO. Nothing is
mocked in-process: clients reach it only through ``AWS_ENDPOINT_URL``.

Clients are configured the way a user configures any S3 tool, with only the standard
variables (``env()``): ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``.
"""

from __future__ import annotations

import logging
import os
import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self, host: str = "127.0.0.1", port: int | None = None):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
        self.host, self.port = host, port or free_port(host)
        self._server = ThreadedMotoServer(ip_address=host, port=self.port, verbose=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "avfusion-test",
            "AWS_SECRET_ACCESS_KEY": "avfusion-test-secret",
        }

    def start(self) -> S3Server:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def apply_env(self) -> None:
        """Point this process's S3 clients at the server (and forget cached clients)."""
        import s3fs

        for k in [k for k in os.environ if k.startswith("AWS_")]:
            del os.environ[k]
        os.environ.update(self.env())
        s3fs.S3FileSystem.clear_instance_cache()

    def make_bucket(self, name: str) -> str:
        import fsspec

        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(name)
        return f"s3://{name}"


def clean_env(server: S3Server, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without any AWS_* variable, plus
    only the server's three standard ones: what a user would export."""
    env = {k: v for k, v in (base or os.environ).items() if not k.startswith("AWS_")}
    env.update(server.env())
    return env
