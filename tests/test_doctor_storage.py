"""Doctor's object-store check: an endpoint that does not answer is called unreachable
within seconds, never "bucket does not exist" after botocore's minute of retries."""

import os
import socket
import subprocess
import sys
import time

import pytest

from avfusion.doctor import FAIL, endpoint_unreachable, storage_check


def _closed_port() -> tuple[int, socket.socket]:
    """A loopback port nothing listens on (bound, never listening: refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1], s


def test_a_refused_endpoint_is_unreachable_at_once():
    port, holder = _closed_port()
    with holder:
        t0 = time.monotonic()
        why = endpoint_unreachable(f"http://127.0.0.1:{port}")
        check = storage_check("s3://shards/x", f"http://127.0.0.1:{port}")
        took = time.monotonic() - t0
    assert why == f"127.0.0.1:{port}: Connection refused"
    assert check.status == FAIL and "unreachable" in check.detail and "does not exist" not in check.detail
    assert took < 2, took


@pytest.mark.slow
def test_doctor_reports_an_unreachable_endpoint_within_seconds():
    port, holder = _closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s")
    with holder:
        t0 = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "jobs.doctor", "--video-weights", "none", "--out", "s3://shards/x"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        took = time.monotonic() - t0
    line = next(x for x in result.stdout.splitlines() if "output" in x)
    assert line.startswith("FAIL  output        endpoint http://127.0.0.1:") and "unreachable" in line, line
    assert result.returncode == 1 and took < 30, took  # the other checks run ffmpeg and yt-dlp
