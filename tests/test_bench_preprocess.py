"""``avfusion bench preprocess --source http``'s measurements, run small: the origin's
byte counts and the window's media are measured, not assumed."""

import os
import tempfile
from pathlib import Path

import pytest

from jobs.bench import preprocess as bench

pytestmark = pytest.mark.slow


def test_http_rows_measure_cpu_and_the_bytes_the_origin_served(tmp_path):
    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    clips = bench.make_clips(tmp_path, 2, ffmpeg)
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_AUTH_MODE="token")
    start = bench._ours([], 64, env)
    rows = bench.http_rows(clips, tmp_path, ffmpeg, 64, env, start)
    served, media, requests = rows["short"]
    assert media == sum(c.stat().st_size for c in clips) / 2 and served >= media * 0.9 and requests >= 2
    l_served, l_window, l_requests, l_size = rows["long"]
    # 10 s of a 300 s file: about a thirtieth of its packets, served with its index and pre-roll
    assert l_size / 60 < l_window < l_size / 10 and l_window < l_served < l_size, rows["long"]
    assert rows["cpu_margin"] > 0 and rows["cpu_whole"] > rows["cpu_margin"]


def test_window_bytes_counts_the_packets_of_the_window_only():
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory() as tmp:
        (clip,) = bench.make_clips(Path(tmp), 1, imageio_ffmpeg.get_ffmpeg_exe())
        whole = bench.window_bytes(clip, 0.0, 10.0)
        first, second = bench.window_bytes(clip, 0.0, 5.0), bench.window_bytes(clip, 5.0, 5.0)
        assert first + second == whole and 0.8 * clip.stat().st_size < whole < clip.stat().st_size
