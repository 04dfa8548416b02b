"""Measure a 10 s section fetch from a long faststart MP4 on the loopback origin, with
ffmpeg's default request size and with ``-request_size`` (yt-dlp issue 17612's remedy).

    PYTHONPATH=$PWD python -m tests.measure_request_size [--minutes 5] [--repeat 3]

Prints wall seconds, HTTP requests and body bytes the origin sent, per setting.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--start", type=float, help="section start (default: the middle)")
    args = p.parse_args()
    from avfusion.config import ClipSpec
    from avfusion.download import DownloadConfig, download_section
    from avfusion.sources import ClipTask
    from avfusion.synth import SynthSpec, write_clip
    from jobs.bench.origin import RangeServer
    from tests.corpus import faststart_copy

    tmp = Path(tempfile.mkdtemp(prefix="avf-reqsize-"))
    seconds = args.minutes * 60
    frames = np.random.default_rng(0).integers(0, 256, (int(seconds * 5), 72, 96, 3), dtype=np.uint8)
    src = write_clip(
        tmp / "src.mp4", SynthSpec(duration=seconds, fps=5, width=96, height=72, crf=20), frames=frames
    ).path
    (tmp / "served").mkdir()
    faststart_copy(src, tmp / "served" / "long.mp4")
    size = (tmp / "served" / "long.mp4").stat().st_size
    start = args.start if args.start is not None else seconds / 2
    print(f"source {seconds:.0f} s, {size / 1e6:.1f} MB; section {start:.0f}-{start + 10:.0f} s")
    for request_size in (None, 1 << 20, 8 << 20):
        walls, reqs, sent = [], [], []
        for i in range(args.repeat):
            work = tmp / f"w{request_size}-{i}"
            work.mkdir()
            with RangeServer(tmp / "served") as server:
                t0 = time.perf_counter()
                download_section(
                    ClipTask(key="long", source=server.url("long.mp4"), start=start),
                    ClipSpec(clip_seconds=10.0),
                    DownloadConfig(request_size=request_size, max_attempts=1),
                    work,
                )
                walls.append(time.perf_counter() - t0)
                reqs.append(server.requests["long.mp4"])
                sent.append(server.bytes_sent["long.mp4"])
        print(
            f"request_size {str(request_size or 'default'):>9}: "
            f"{statistics.median(walls):6.2f} s median wall, "
            f"{statistics.median(reqs):.0f} requests, {statistics.median(sent) / 1e6:6.2f} MB sent "
            f"({statistics.median(sent) / size:.0%} of the file)"
        )


if __name__ == "__main__":
    main()
