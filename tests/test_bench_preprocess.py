"""``avfusion bench preprocess --source http``'s measurements, run small: the origin's
byte counts and the window's media are measured, not assumed."""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from jobs.bench import preprocess as bench

pytestmark = pytest.mark.slow


# In an interpreter of its own, as ``avfusion bench`` runs: ``run_measured`` reaps every
# child of its process and ends the ones left after the command, and a test process may
# hold children of other tests (an embedded Ray's GCS, whose end stops that process).
_HTTP_ROWS = """
import json, os, sys
from pathlib import Path
import imageio_ffmpeg
from jobs.bench import preprocess as bench
folder, ffmpeg = Path(sys.argv[1]), imageio_ffmpeg.get_ffmpeg_exe()
clips = bench.make_clips(folder, 2, ffmpeg)
env = dict(os.environ, OMP_NUM_THREADS="1", RAY_AUTH_MODE="token")
rows = bench.http_rows(clips, folder, ffmpeg, 64, env)
print(json.dumps({**rows, "sizes": [c.stat().st_size for c in clips]}))
"""


def test_http_rows_measure_cpu_and_the_bytes_the_origin_served(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", _HTTP_ROWS, str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for name in ("job", "ffmpeg", "direct"):  # the job (PyAV window copy), fetch ffmpeg, the design row
        rows = out[name]
        served, served_media, requests, media, necessary, _, floor = rows["short"]
        assert media == necessary == floor == sum(out["sizes"]) / 2 and requests >= 2, (name, rows)
        assert served >= served_media >= necessary, (name, rows)  # the whole file is the window
        l_served, l_media, l_requests, l_window, l_necessary, l_size, l_floor = rows["long"]
        # 10 s of a 300 s file: about a thirtieth of its packets, served with its index and
        # pre-roll, which no fetch of one range that decodes the window can skip
        assert l_size / 60 < l_window < l_floor < l_necessary <= l_media <= l_served < l_size, (name, rows)
        # start-up apart: a worker with yt-dlp costs more to start than to fetch one clip
        assert 0 < rows["cpu_margin"] < rows["cpu_startup"], (name, rows)
        assert rows["cpu_whole"] > rows["cpu_margin"], (name, rows)
    for name in ("job", "ffmpeg"):  # the same windows from the source as a DASH pair
        d_served, d_media, d_requests, d_window, d_necessary, d_size, d_floor = out[name]["dash"]
        assert d_window == out[name]["long"][3] and d_floor <= d_media <= d_served < d_size, out[name]
    assert "dash" not in out["direct"]
    # YouTube's layout needs no big index: the job moves far less than from the progressive file
    assert out["job"]["dash"][1] < 0.75 * out["job"]["long"][1], out["job"]
    src = out["source"]  # the 5-minute source: what its windows need, the same for every row
    assert (
        src["window"]
        < src["floor"]
        < src["span"]
        < src["necessary"]
        == pytest.approx(src["index"] + src["span"])
    ), src
    assert (
        src["necessary"] == out["job"]["long"][4] and 0 < src["keyframe_gap_s"][0] <= src["keyframe_gap_s"][1]
    )


def test_window_bytes_counts_the_packets_of_the_window_only():
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory() as tmp:
        (clip,) = bench.make_clips(Path(tmp), 1, imageio_ffmpeg.get_ffmpeg_exe())
        whole = bench.window_bytes(clip, 0.0, 10.0)
        first, second = bench.window_bytes(clip, 0.0, 5.0), bench.window_bytes(clip, 5.0, 5.0)
        assert first + second == whole and 0.8 * clip.stat().st_size < whole < clip.stat().st_size


def test_the_pre_roll_runs_from_the_keyframe_before_the_window():
    """A window that starts just before a keyframe needs the whole GOP before it; one that
    starts on the keyframe needs none of it. The index is counted apart."""
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory() as tmp:
        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
        (clip,) = bench.make_clips(Path(tmp), 1, ffmpeg)
        long = bench.make_long(Path(tmp), ffmpeg, clip, seconds=60)
        keys = bench.keyframe_times(long)
        at = next(i for i, t in enumerate(keys) if t >= 20.0)
        key, prev = keys[at], keys[at - 1]
        on, before = (bench.necessary_bytes(long, t, 10.0, index=False) for t in (key, key - 0.1))
        gop = bench.window_bytes(long, prev, key - prev)  # the packets from the keyframe before
        assert before - on > gop / 2, (on, before, gop)
        assert bench.necessary_bytes(long, key, 10.0) == on + bench.mp4_index_bytes(long) > on


def test_the_floor_is_the_window_and_the_video_from_the_keyframe_before_it():
    """Starting on a keyframe, the floor is the window's packets alone; a tenth of a
    second before it, the GOP before as well (its video packets only)."""
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory() as tmp:
        ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
        (clip,) = bench.make_clips(Path(tmp), 1, ffmpeg)
        long = bench.make_long(Path(tmp), ffmpeg, clip, seconds=60)
        keys = bench.keyframe_times(long)
        key = next(t for t in keys if t >= 20.0)
        assert bench.floor_bytes(long, key, 10.0) == bench.window_bytes(long, key, 10.0)
        before = bench.floor_bytes(long, key - 0.1, 10.0) - bench.window_bytes(long, key - 0.1, 10.0)
        span = bench.necessary_bytes(long, key - 0.1, 10.0, index=False) - bench.window_bytes(
            long, key - 0.1, 10.0
        )
        assert 0 < before < span  # the GOP's video, not the audio between


def test_a_dash_pair_is_read_by_yt_dlp_as_two_plain_formats(tmp_path):
    """The bench's DASH pair: yt-dlp's generic extractor reads the manifest into a video
    and an audio format with plain URLs (as YouTube's ``bv*+ba``), and each file holds
    its index at the front."""
    import imageio_ffmpeg
    import yt_dlp

    from jobs.bench.origin import RangeServer

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    (clip,) = bench.make_clips(tmp_path, 1, ffmpeg)
    mpd = bench.make_dash(tmp_path, ffmpeg, bench.make_long(tmp_path, ffmpeg, clip, seconds=60))
    with RangeServer(tmp_path) as origin, yt_dlp.YoutubeDL({"quiet": True, "format": "bv*+ba"}) as ydl:
        info = ydl.extract_info(origin.url(mpd.name), download=False)
    formats = info["requested_formats"]
    assert [f["url"].rsplit("/", 1)[1] for f in formats] == ["dashv.mp4", "dasha.m4a"]
    assert all(f["protocol"] in ("http", "https") for f in formats)
    for name in ("dashv.mp4", "dasha.m4a"):
        assert (
            bench.mp4_index_bytes(tmp_path / name, front=True)
            < 4_000
            < bench.mp4_index_bytes(tmp_path / name)
        )
