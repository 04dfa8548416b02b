"""``avfusion bench preprocess``: CPU seconds per clip, ours vs ffmpeg floors, every
process counted and start-up handled alike on both sides.

Input: N real-content 10 s 640×360 30 fps H.264 + AAC 44.1 kHz clips, made by
re-encoding the bundled sample clips (real photographs panned and zoomed, real
recordings) — synthetic barcodes compress to almost nothing and decode unrealistically
fast. Each method runs as its own command, measured by ``run_measured`` (the CPU of
its whole process tree, peak summed PSS):

* ours: the job's ``process_clip`` (``decode_clip`` + ``encode_sample``: JPEG frames,
  FLAC audio), one thread, all N clips in one Python process;
* floor: ``ffmpeg -threads 1 -i clip -f null -`` per clip (full decode of both
  streams, nothing written);
* seed-style: per clip one ffmpeg for a 16 kHz mono WAV and one for 8 frames as JPEG,
  each with ``-threads 1`` (decoder, filters and encoder) as the one-thread header says;
* the job: ``avfusion preprocess`` on the same folder, embedded Ray, shards written —
  GCS, raylet and every Ray worker process counted.

Start-up: every figure is given twice. "whole" includes each process's start-up
(Python imports for ours, yt-dlp's too from URLs, ffmpeg's own for each ffmpeg run, Ray
for the job). "margin" is the cost of one more clip, its process's start-up reported
apart, *on each side*: ours as the slope between the worker on the N clips and on the
same N clips twice (each the least of two runs; start-up is what the N-clip run costs
beyond N margins, paid once per worker process); each ffmpeg run minus ffmpeg on a
one-frame clip (an ffmpeg process per clip pays its start-up every clip: the floor's
margin leaves it out, which only makes the floor lower); the job as (job on N clips −
job on 1 clip) / (N − 1).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from jobs.bench.common import (
    RESULTS_DIR,
    Usage,
    accounting,
    print_table,
    python_cmd,
    run_measured,
    write_results,
)


def make_clips(folder: Path, n: int, ffmpeg: str) -> list[Path]:
    """``n`` real-content clips: the bundled sample clips re-encoded at 640×360 30 fps."""
    from avfusion.sample_data import __file__ as sample_init

    sources = sorted((Path(sample_init).parent / "clips").glob("*.mp4"))
    out = []
    for i in range(n):
        dst = folder / f"bench{i:03d}.mp4"
        subprocess.run(
            [
                ffmpeg,
                "-v",
                "error",
                "-y",
                "-i",
                str(sources[i % len(sources)]),
                "-vf",
                "scale=640:360,fps=30",
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-crf",
                "23",
                "-c:a",
                "aac",
                "-ar",
                "44100",
                "-b:a",
                "128k",
                "-t",
                "10",
                str(dst),
            ],
            check=True,
        )
        out.append(dst)
    return out


def make_tiny(folder: Path, ffmpeg: str, src: Path) -> Path:
    """A one-frame clip from the same encoder: what an ffmpeg run costs doing nothing."""
    dst = folder / "tiny.mp4"
    subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-y",
            "-i",
            str(src),
            "-frames:v",
            "1",
            "-t",
            "0.04",
            "-c:v",
            "libx264",
            "-c:a",
            "aac",
            str(dst),
        ],
        check=True,
    )
    return dst


def ours_worker(
    paths: list[str], frame_size: int, skip_nonref: bool = False, start: float = 0.0, fetch: str = "pyav"
) -> None:
    """Child-process body: the job's per-clip stage (``process_clip``: decode, JPEG/FLAC
    encode; for URLs the download first, yt-dlp and the ``fetch`` included) on each path
    or URL, the window from ``start``, sequentially, one thread (imports happen even for 0
    clips)."""
    import tempfile
    from dataclasses import replace

    from avfusion.config import ClipSpec
    from avfusion.decode import DecodeLimits
    from avfusion.download import DownloadConfig
    from avfusion.preprocess.shard import PreprocessConfig, process_clip
    from avfusion.sources import ClipTask
    from shards.manifest import Failure

    cfg = PreprocessConfig(
        clip=ClipSpec(frame_size=frame_size), limits=DecodeLimits(threads=1, skip_nonref=skip_nonref)
    )
    cfg = replace(cfg, download=DownloadConfig(fetch=fetch))
    with tempfile.TemporaryDirectory() as workdir:
        for p in paths:
            result = process_clip(ClipTask(key=Path(p).stem, source=p, start=start), cfg, {}, Path(workdir))
            if isinstance(result, Failure):  # a benchmark of failures would measure nothing
                raise SystemExit(f"{p}: {result.kind}: {result.message}")


def direct_worker(urls: list[str], frame_size: int, start: float = 0.0) -> None:
    """Child-process body of the design row: what the job's PyAV fetch would cost without
    its packet copy and file (issue 26's "no remux, no temp file"). yt-dlp resolves each
    URL with the job's options, the job's reader (``_MediaReader``: bounded Range
    requests through yt-dlp) serves the format to PyAV, and the job's decode and encode
    run on the window straight from it. One-file formats only (what the origin serves)."""
    import av

    from avfusion import download
    from avfusion.config import ClipSpec
    from avfusion.decode import DecodeLimits, _decode
    from shards.writer import encode_sample

    spec, limits, cfg = ClipSpec(frame_size=frame_size), DecodeLimits(threads=1), download.DownloadConfig()
    with tempfile.TemporaryDirectory() as workdir:
        opts = download.ydl_options(cfg, start, start + spec.clip_seconds, Path(workdir))
        with download._recording_ydl()(opts) as ydl:
            for url in urls:
                info = download._extracted(ydl, url)
                formats = download._window_formats(ydl, info) or []
                if len(formats) != 1:
                    raise SystemExit(f"{url}: the design row reads one plain http(s) file, not {formats}")
                fmt = formats[0]
                headers = download._media_headers(fmt)
                with (
                    download._MediaReader(
                        ydl, fmt["url"], headers, cfg.request_size or 1 << 20, 30.0
                    ) as reader,
                    av.open(reader, "r", metadata_errors="ignore") as container,
                ):  # decode_clip opens local files only; the window logic is the same
                    clip = _decode(container, Path(info["id"]), spec, start, limits)
                encode_sample(info["id"], clip.waveform, clip.frames, 0, {}, spec.sample_rate)


def _ours(
    paths: list[str],
    frame_size: int,
    env: dict,
    skip_nonref: bool = False,
    start: float = 0.0,
    fetch: str = "pyav",
):
    """``ours_worker`` (or ``direct_worker`` for ``fetch`` "direct") in a process of its own, measured."""
    spec = {
        "paths": paths,
        "frame_size": frame_size,
        "skip_nonref": skip_nonref,
        "start": start,
        "fetch": fetch,
    }
    return run_measured(python_cmd("jobs.bench.preprocess", "--worker", json.dumps(spec)), env=env)


def _slope(paths: list[str], frame_size: int, env: dict, **kwargs) -> tuple[float, float, float, Usage]:
    """(CPU per clip of the run on ``paths``, the margin: the slope from it to the run on
    ``paths`` twice, the start-up: what the first run costs beyond its clips' margins,
    the first run's ``Usage``). Each run is the least of two: a core busy elsewhere only
    ever adds."""
    n = len(paths)
    once = min((_ours(paths, frame_size, env, **kwargs) for _ in range(2)), key=lambda u: u.cpu_seconds)
    twice = min(_ours(paths * 2, frame_size, env, **kwargs).cpu_seconds for _ in range(2))
    margin = (twice - once.cpu_seconds) / n
    return once.cpu_seconds / n, margin, once.cpu_seconds - n * margin, once


def _job(folder: Path, out: Path, frame_size: int, cpus: int, env: dict):
    return run_measured(
        python_cmd(
            "jobs.preprocess",
            str(folder),
            "--out",
            str(out),
            "--frame-size",
            str(frame_size),
            "--num-cpus",
            str(cpus),
            "--shard-size",
            "4",
        ),
        env=env,
    )


def make_long(folder: Path, ffmpeg: str, src: Path, seconds: int = 300) -> Path:
    """A 5-minute faststart source (``src`` looped): a 10 s window is a thirtieth of it."""
    dst = folder / "long.mp4"
    subprocess.run(
        [ffmpeg, "-v", "error", "-y", "-stream_loop", "-1", "-i", str(src), "-t", str(seconds)]
        + ["-c", "copy", "-movflags", "+faststart", str(dst)],
        check=True,
    )
    return dst


def make_dash(folder: Path, ffmpeg: str, src: Path) -> Path:
    """``src`` as YouTube serves a video: a DASH pair, a video-only MP4 fragmented at its
    keyframes and an audio-only one in 10 s fragments (YouTube's audio formats' segment
    length), each with its index (``moov`` and one ``sidx``) at the front, and the
    manifest that names them (yt-dlp reads it as two plain formats, as it reads
    YouTube's ``bv*+ba``)."""
    import av

    streams = {"v": ("video", "dashv.mp4", []), "a": ("audio", "dasha.m4a", ["-frag_duration", "10000000"])}
    ranges = {}
    for key, (_, name, extra) in streams.items():
        subprocess.run(
            [ffmpeg, "-v", "error", "-y", "-i", str(src), "-map", f"0:{key}", "-c", "copy"]
            + ["-movflags", "+dash+global_sidx", *extra, "-f", "mp4", str(folder / name)],
            check=True,
        )
        boxes: dict[str, tuple[int, int]] = {}
        at, data = 0, (folder / name).read_bytes()
        while at + 8 <= len(data) and not {"moov", "sidx"} <= boxes.keys():
            size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8].decode("latin-1")
            boxes[kind], at = (at, at + size - 1), at + size
        ranges[key] = (boxes["moov"][1], boxes["sidx"])
    with av.open(str(src)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        seconds = float(container.duration or 0) / av.time_base
        width, height, rate = (
            video.codec_context.width,
            video.codec_context.height,
            audio.codec_context.sample_rate,
        )

    def representation(key: str, attrs: str) -> str:
        kind, name, _ = streams[key]
        init_end, (index_start, index_end) = ranges[key]
        return (
            f'<AdaptationSet mimeType="{kind}/mp4" contentType="{kind}"><Representation id="{key}" {attrs}>'
            f'<BaseURL>{name}</BaseURL><SegmentBase indexRange="{index_start}-{index_end}">'
            f'<Initialization range="0-{init_end}"/></SegmentBase></Representation></AdaptationSet>'
        )

    mpd = folder / "long.mpd"
    mpd.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
        f'mediaPresentationDuration="PT{seconds:.3f}S" profiles="urn:mpeg:dash:profile:isoff-on-demand:2011" '
        'minBufferTime="PT2S"><Period>'
        + representation("v", f'codecs="avc1.64001e" bandwidth="500000" width="{width}" height="{height}"')
        + representation("a", f'codecs="mp4a.40.2" bandwidth="128000" audioSamplingRate="{rate}"')
        + "</Period></MPD>\n"
    )
    return mpd


def floor_bytes(path: Path, start: float, seconds: float) -> int:
    """The least any fetch that decodes the window moves, its index aside: the window's
    packets and the video packets from the keyframe before the window (by presentation
    time, as a decoder needs them), fetched packet by packet, audio from the window on."""
    import av

    window, key, video = 0, -math.inf, []
    with av.open(str(path)) as container:
        for p in container.demux():
            if not p.size or p.pts is None:
                continue
            t = float(p.pts * p.time_base)
            window += p.size if start <= t < start + seconds else 0
            if p.stream.type == "video":
                video.append((t, p.size))
                if p.is_keyframe and t <= start:
                    key = max(key, t)
    return window + sum(size for t, size in video if key <= t < start)


def window_bytes(path: Path, start: float, seconds: float) -> int:
    """Bytes of the audio and video packets whose time falls in the window: the media a
    perfect fetch of the window would move."""
    import av

    total = 0
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.pts is not None and packet.time_base is not None and packet.size:
                t = float(packet.pts * packet.time_base)
                total += packet.size if start <= t < start + seconds else 0
    return total


def mp4_index_bytes(path: Path, front: bool = False) -> int:
    """Bytes of an MP4's index: every top-level box but ``mdat`` and ``free``; with
    ``front``, only those before the first ``mdat`` or ``moof`` (a fragmented file's
    ``ftyp``, ``moov`` and ``sidx``: its fragments' own headers come with them)."""
    index, at, data = 0, 0, path.read_bytes()
    while at + 8 <= len(data):
        size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8]
        size = int.from_bytes(data[at + 8 : at + 16], "big") if size == 1 else size or len(data) - at
        if front and kind in (b"mdat", b"moof"):
            break
        index += 0 if kind in (b"mdat", b"free") else size
        at += size
    return index


def keyframe_times(path: Path) -> list[float]:
    """The video keyframes' presentation times, in seconds."""
    import av

    with av.open(str(path)) as container:
        return [
            float(p.pts * p.time_base)
            for p in container.demux(video=0)
            if p.is_keyframe and p.pts is not None
        ]


def necessary_bytes(path: Path, start: float, seconds: float, index: bool = True) -> int:
    """The bytes any fetch that decodes the window must move from this MP4: its index
    (``mp4_index_bytes``; left out with ``index=False``: what a reader that fetched only
    the index entries of the window would come near) and the span of the file from the
    first packet the window needs (video from the keyframe at or before its start, audio
    from the packet that holds it) to the end of the last packet decoded before its end."""
    import av

    packets = []
    with av.open(str(path)) as container:
        for p in container.demux():
            if p.size and p.pts is not None and p.pos is not None and p.pos >= 0:  # by presentation time
                packets.append((p.stream.type, float(p.pts * p.time_base), p.pos, p.size, p.is_keyframe))
    key = max(t for kind, t, _, _, k in packets if kind == "video" and k and t <= start)
    audio = max(t for kind, t, *_ in packets if kind == "audio" and t <= start)
    needed = [
        (pos, pos + size)
        for kind, t, pos, size, _ in packets
        if t < start + seconds and t >= (key if kind == "video" else audio)
    ]
    span = max(e for _, e in needed) - min(s for s, _ in needed)
    return (mp4_index_bytes(path) if index else 0) + span


def http_rows(clips: list[Path], folder: Path, ffmpeg: str, frame_size: int, env: dict) -> dict:
    """``--source http``: the same clips fetched from a loopback origin that honours
    Range (``jobs.bench.origin``) through the job's download stage (yt-dlp, then PyAV's
    copy of the window), one thread; the same with ``download.fetch: ffmpeg`` (yt-dlp's
    ffmpeg process); and the design row (``direct_worker``): CPU per clip (the origin's
    own CPU is this process's, not counted; the margin and start-up as ``_slope``), and
    the bytes the origin served against the window's media and against what a fetch
    must move (``necessary_bytes``), for 10 s files and for 10 s windows of a 5-minute
    source: all bytes, and those of the media (ranged) requests alone (yt-dlp's generic
    extractor first looks at a media URL, with a HEAD: YouTube's extraction asks
    youtube.com, not the media host). Keys: "job", "ffmpeg", "direct"; and "source", what
    the 5-minute source's windows hold: their media, the index, the pre-roll span
    (``necessary_bytes`` without the index), the keyframe gaps."""
    from jobs.bench.origin import RangeServer

    long = make_long(folder, ffmpeg, clips[0])
    n, starts = len(clips), (33.3, 71.7, 102.1, 145.0, 201.4, 266.0)
    short_media = sum(c.stat().st_size for c in clips)
    long_window = sum(window_bytes(long, t, 10.0) for t in starts) / len(starts)
    long_necessary = sum(necessary_bytes(long, t, 10.0) for t in starts) / len(starts)
    long_floor = sum(floor_bytes(long, t, 10.0) for t in starts) / len(starts)
    dash = make_dash(folder, ffmpeg, long)
    dash_names = [dash.name, "dashv.mp4", "dasha.m4a"]
    dash_index = sum(mp4_index_bytes(folder / n, front=True) for n in dash_names[1:])  # ftyp, moov, sidx
    keys = keyframe_times(long)
    gaps = [b - a for a, b in zip(keys, keys[1:], strict=False)]
    rows: dict = {
        "source": {
            "window": long_window,
            "index": mp4_index_bytes(long),
            "span": sum(necessary_bytes(long, t, 10.0, index=False) for t in starts) / len(starts),
            "necessary": long_necessary,
            "floor": long_floor,
            "keyframe_gap_s": (sum(gaps) / len(gaps), max(gaps)),
        }
    }

    def served(names: list[str], since: dict[str, int]) -> tuple[float, float, float]:
        """(all bytes, media requests' bytes, requests) the origin served for ``names``
        after the first ``since[name]`` requests (the lists are never cleared: a handler
        may still be counting a dropped answer's bytes)."""
        with origin.lock:  # a request's range and its count are appended together
            sent = [
                pair
                for name in names
                for pair in list(
                    zip(origin.ranges.get(name, []), origin.sent_by_request.get(name, []), strict=True)
                )[since.get(name, 0) :]
            ]
        return sum(b for _, b in sent), sum(b for r, b in sent if r), len(sent)

    def mark() -> dict[str, int]:
        with origin.lock:
            return {name: len(r) for name, r in origin.ranges.items()}

    with RangeServer(folder) as origin:
        for name, fetch in (("job", "pyav"), ("ffmpeg", "ffmpeg"), ("direct", "direct")):
            urls = [origin.url(c.name) for c in clips]
            whole, margin, startup, ours = _slope(urls, frame_size, env, fetch=fetch)
            since = mark()
            _ours(urls, frame_size, env, fetch=fetch)
            short = served([c.name for c in clips], since)
            since = mark()
            for t in starts:
                _ours([origin.url(long.name)], frame_size, env, start=t, fetch=fetch)
            long_served = served([long.name], since)
            rows[name] = {
                "cpu_whole": whole,
                "cpu_margin": margin,
                "cpu_startup": startup,
                "rss": ours.max_rss_mb,
                "short": (*(v / n for v in short), short_media / n, short_media / n, None, short_media / n),
                "long": (
                    *(v / len(starts) for v in long_served),
                    long_window,
                    long_necessary,
                    long.stat().st_size,
                    long_floor,
                ),
            }
            if fetch != "direct":  # the design row reads one URL; a DASH pair is two formats
                since = mark()
                for t in starts:
                    _ours([origin.url(dash.name)], frame_size, env, start=t, fetch=fetch)
                rows[name]["dash"] = (
                    *(v / len(starts) for v in served(dash_names, since)),
                    long_window,
                    long_floor + dash_index,  # what the pair's layout leaves necessary
                    sum((folder / n).stat().st_size for n in dash_names),
                    long_floor + dash_index,
                )
    return rows


def pool_rows(clips: list[Path], folder: Path, env: dict, n_clips: int = 18) -> list[tuple]:
    """The egress pool: the preprocess job (in-process executor, 3 threads) through 1 and
    through 3 loopback proxies with distinct outgoing addresses, against an origin that
    answers 429 to an address past 9 requests in 10 s; the governor spaces each address
    1 s apart and cools a blocked one down 5 s. Clips per hour, failures, 429s, and the
    clips an address started inside one of its cooldowns (the governor's promise: 0)."""
    import time

    from jobs.bench.origin import RangeServer
    from jobs.bench.proxy import HttpProxy

    config = folder / "pool.yaml"
    config.write_text(
        "clip:\n  frame_size: 64\ndownload:\n  max_attempts: 8\n  backoff_base: 0.1\n"
        "governor:\n  min_spacing: 1.0\n  jitter: 0.0\n  per_node_per_hour: 100000\n"
        "  cooldown_start: 5.0\n  cooldown_max: 20.0\n  max_blocked: 600\n"
    )
    rows = []
    for k in (1, 3):
        sources = ("127.0.0.2", "127.0.0.6", "127.0.0.7")[:k]
        with RangeServer(folder) as origin:
            origin.limit_per_peer(9, 10.0)
            proxies = [HttpProxy(source_host=h).__enter__() for h in sources]
            try:
                urls = folder / f"pool{k}.csv"
                urls.write_text(
                    "url,id,label\n"
                    + "".join(f"{origin.url(clips[i % len(clips)].name)},p{i},x\n" for i in range(n_clips))
                )
                pool = folder / f"proxies{k}.txt"
                pool.write_text("".join(f"{p.url}\n" for p in proxies))
                out = folder / f"pool{k}-out"
                t0 = time.perf_counter()
                run = run_measured(
                    python_cmd("jobs.preprocess", str(urls), "--out", str(out), "--proxies", str(pool))
                    + [
                        "--config",
                        str(config),
                        "--executor",
                        "local",
                        "--threads",
                        "3",
                        "--shard-size",
                        "100",
                    ],
                    env=env,
                )
                wall = time.perf_counter() - t0
            finally:
                for p in proxies:
                    p.__exit__(None, None, None)
            log = list(origin.log)
        manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
        samples = manifest.get("num_samples", 0)
        limited = [r for r in log if r["status"] == 429]
        # A clip's attempt starts with the extractor's request (no Range). After a 429 its
        # address must start none until its cooldown (5 s) is over; requests granted
        # before the 429 was reported may land in its first second.
        starts_in_cooldown = sum(
            1
            for hit in limited
            for r in log
            if r["peer"][0] == hit["peer"][0]
            and not r["headers"].get("Range")
            and 1.0 < r["t"] - hit["t"] < 4.5
        )
        rows.append(
            (
                f"{k} prox{'y' if k == 1 else 'ies'}",
                samples,
                n_clips - samples,
                len(limited),
                starts_in_cooldown,
                wall,
                samples * 3600.0 / wall,
                run.cpu_seconds,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avfusion bench preprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--frame-size", type=int, default=224)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs for the preprocess job's embedded Ray")
    parser.add_argument("--no-job", action="store_true", help="skip the Ray job rows")
    parser.add_argument("--workdir", type=Path, help="where to write the clips (default: a temp dir)")
    parser.add_argument(
        "--source",
        choices=("local", "http"),
        default="local",
        help="http: also fetch the clips from a loopback origin through the download stage (CPU, bytes "
        "served) and run the job through a pool of 1 and of 3 proxies (clips/hour)",
    )
    parser.add_argument(
        "--results", default=RESULTS_DIR, help="where preprocess.{md,json} go (a folder or URL)"
    )
    args = parser.parse_args(argv)
    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    one = ["-threads", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.workdir or Path(tmp) / "clips"
        folder.mkdir(parents=True, exist_ok=True)
        print(f"writing {args.clips} real-content 10 s 640x360 30 fps H.264+AAC clips to {folder}")
        clips = make_clips(folder, args.clips, ffmpeg)
        tiny = make_tiny(Path(tmp), ffmpeg, clips[0])
        n = len(clips)
        env = dict(os.environ, OMP_NUM_THREADS="1", RAY_AUTH_MODE="token")
        paths = [str(c) for c in clips]
        ours_slope = _slope(paths, args.frame_size, env)
        fast_slope = _slope(paths, args.frame_size, env, skip_nonref=True)
        ours, fast = ours_slope[3], fast_slope[3]
        py_start = _ours([], args.frame_size, env)
        null = [ffmpeg, "-v", "error", *one, "-i"]
        floor = [run_measured([*null, str(c), *one, "-f", "null", "-"]) for c in clips]
        ff_start = [run_measured([*null, str(tiny), *one, "-f", "null", "-"]) for _ in range(3)]
        seed = []
        for c in clips:
            out = Path(tmp) / c.stem
            out.mkdir(exist_ok=True)
            wav = run_measured(
                [
                    ffmpeg,
                    "-v",
                    "error",
                    "-y",
                    *one,
                    "-i",
                    str(c),
                    "-vn",
                    "-ac",
                    "1",
                    "-ar",
                    "16000",
                    *one,
                    str(out / "a.wav"),
                ]
            )
            jpg = run_measured(
                [
                    ffmpeg,
                    "-v",
                    "error",
                    "-y",
                    *one,
                    "-i",
                    str(c),
                    "-filter_threads",
                    "1",
                    "-vf",
                    "fps=8/10,scale=224:224",
                    "-frames:v",
                    "8",
                    *one,
                    str(out / "f%d.jpg"),
                ]
            )
            seed.append((wav, jpg))
        http = pool = None
        if args.source == "http":
            http = http_rows(clips, folder, ffmpeg, args.frame_size, env)
            pool = pool_rows(clips, folder, env)
        job = job1 = None
        if not args.no_job:
            job = _job(folder, Path(tmp) / "shards_n", args.frame_size, args.cpus, env)
            single = Path(tmp) / "single"
            single.mkdir()
            os.symlink(clips[0], single / clips[0].name)
            job1 = _job(single, Path(tmp) / "shards_1", args.frame_size, args.cpus, env)

    ff0 = min(u.cpu_seconds for u in ff_start)  # the least an ffmpeg process costs here
    whole = {
        "ours": ours.cpu_seconds / n,
        "fast": fast.cpu_seconds / n,
        "floor": sum(u.cpu_seconds for u in floor) / n,
        "seed": sum(a.cpu_seconds + b.cpu_seconds for a, b in seed) / n,
    }
    whole["ours"], margin_ours, startup_ours, _ = ours_slope
    whole["fast"], margin_fast, startup_fast, _ = fast_slope
    margin = {
        "ours": margin_ours,
        "fast": margin_fast,
        "floor": whole["floor"] - ff0,
        "seed": whole["seed"] - 2 * ff0,
    }
    startup = {"ours": startup_ours, "fast": startup_fast, "floor": ff0, "seed": 2 * ff0}
    rows = [
        ("ours (decode + JPEG/FLAC encode), 1 process", whole["ours"], margin["ours"], startup["ours"]),
        ("ours, skip_nonref (frames within 1)", whole["fast"], margin["fast"], startup["fast"]),
        ("floor: ffmpeg -threads 1 -f null, per clip", whole["floor"], margin["floor"], startup["floor"]),
        ("seed-style: 2 ffmpeg -threads 1 per clip", whole["seed"], margin["seed"], startup["seed"]),
    ]
    peak = [
        ours.max_rss_mb,
        fast.max_rss_mb,
        max(u.max_rss_mb for u in floor),
        max(max(a.max_rss_mb, b.max_rss_mb) for a, b in seed),
    ]
    if http is not None:
        for key, name, label in (
            ("http", "job", "ours from URLs (yt-dlp + PyAV window copy + decode + encode)"),
            ("http_ffmpeg", "ffmpeg", "ours from URLs, fetch ffmpeg (yt-dlp's ffmpeg process)"),
            ("direct", "direct", "design: decode straight from the reader (no copy, no file)"),
        ):
            whole[key], margin[key] = http[name]["cpu_whole"], http[name]["cpu_margin"]
            startup[key] = http[name]["cpu_startup"]
            rows.append((label, whole[key], margin[key], startup[key]))
            peak.append(http[name]["rss"])
    if job is not None and job1 is not None:  # measured together
        whole["job"] = job.cpu_seconds / n
        margin["job"] = (job.cpu_seconds - job1.cpu_seconds) / max(1, n - 1)
        startup["job"] = job1.cpu_seconds - margin["job"]
        rows.append(
            (
                f"the job: avfusion preprocess, Ray, {args.cpus} CPUs",
                whole["job"],
                margin["job"],
                startup["job"],
            )
        )
        peak.append(job.max_rss_mb)
    print_table(
        f"CPU seconds per clip over {n} clips",
        [(*row, mb) for row, mb in zip(rows, peak, strict=True)],
        ("method", "cpu_s/clip whole", "cpu_s/clip margin", "start-up cpu_s", "peak_PSS_MB (tree)"),
    )
    print(f"\nhow accounted: {accounting()}.")
    print(
        "margin: one more clip's CPU; ours as the slope from the worker on the N clips to the same "
        "clips twice, start-up (per process: imports, yt-dlp's extractor order, the first TLS context) "
        "what the N-clip run costs beyond N margins; ffmpeg per clip minus ffmpeg on a 1-frame clip "
        f"({ff0:.3f} cpu_s, paid by every clip); a Python worker with 0 clips costs "
        f"{py_start.cpu_seconds:.2f} cpu_s"
        + (
            f"; Ray job on 1 clip {job1.cpu_seconds:.2f} cpu_s ({job1.wall_seconds:.1f} s wall)"
            if job1
            else ""
        )
    )
    if http is not None:
        byte_rows = []
        for name, how in (("job", "the job"), ("ffmpeg", "fetch ffmpeg"), ("direct", "design")):
            sources = [
                ("10 s files (the window is the file)", http[name]["short"]),
                (
                    f"10 s windows of a 5-minute source ({http[name]['long'][5] / 1e6:.1f} MB)",
                    http[name]["long"],
                ),
            ]
            if "dash" in http[name]:
                sources.append(
                    ("the same windows, the source as a DASH pair (YouTube's layout)", http[name]["dash"])
                )
            for where, (served_all, served_media, requests, window, necessary, _, floor) in sources:
                byte_rows.append(
                    (
                        f"{how}: {where}",
                        served_all / 1e6,
                        served_media / 1e6,
                        window / 1e6,
                        necessary / 1e6,
                        floor / 1e6,
                        served_all / window,
                        served_media / necessary,
                        served_media / floor,
                        requests,
                    )
                )
        print_table(
            "bytes the origin served per clip",
            byte_rows,
            (
                "source",
                "served_MB",
                "media_requests_MB",
                "window_media_MB",
                "necessary_MB",
                "floor_MB",
                "served / window",
                "media / necessary",
                "media / floor",
                "requests",
            ),
        )
        print(
            "window media: the packets timed inside the window; necessary: what a fetch of one range per "
            "file moves (the MP4 index, and the file from the keyframe before the window to its end; for the "
            "DASH pair, its two small indexes and the floor); floor: the window's packets and the video "
            "packets from the keyframe before it, fetched packet by packet with no index; media requests: "
            "the ranged ones (yt-dlp's generic extractor also looks at a media URL once, with a HEAD, and "
            "reads the DASH manifest; YouTube's extraction asks youtube.com instead)"
        )
        src = http["source"]
        print_table(
            "what a 10 s window of the 5-minute source needs (mean of the windows)",
            [
                (
                    src["window"] / 1e6,
                    src["index"] / 1e6,
                    src["span"] / 1e6,
                    src["necessary"] / 1e6,
                    src["floor"] / 1e6,
                    src["span"] / src["window"],
                    src["necessary"] / src["window"],
                    src["floor"] / src["window"],
                    f"{src['keyframe_gap_s'][0]:.1f} / {src['keyframe_gap_s'][1]:.1f}",
                )
            ],
            (
                "window_media_MB",
                "index_MB",
                "pre-roll_span_MB",
                "necessary_MB",
                "floor_MB",
                "span / window",
                "necessary / window",
                "floor / window",
                "keyframe gap s (mean / max)",
            ),
        )
        print(
            "pre-roll span: the file from the keyframe before the window to the window's end (audio "
            "packets between included); floor: the window's packets and the video packets from the "
            "keyframe before it, no index: less than that, no fetch that decodes the window moves"
        )
    if pool is not None:
        print_table(
            "egress pool: the job through 1 and 3 proxies, origin limit 9 requests / 10 s per address",
            pool,
            (
                "pool",
                "samples",
                "failed",
                "429s",
                "clip starts in a cooldown",
                "wall_s",
                "clips/hour",
                "cpu_s",
            ),
        )
    print("\nratios (margin):")
    print(
        f"  ours / floor           = {margin['ours'] / margin['floor']:.2f}x   (whole: "
        f"{whole['ours'] / whole['floor']:.2f}x)"
    )
    print(
        f"  seed-style / ours      = {margin['seed'] / margin['ours']:.2f}x   (whole: "
        f"{whole['seed'] / whole['ours']:.2f}x; with skip_nonref {margin['seed'] / margin['fast']:.2f}x)"
    )
    if http is not None:
        print(
            f"  ours from URLs / floor = {margin['http'] / margin['floor']:.2f}x   (whole: "
            f"{whole['http'] / whole['floor']:.2f}x; the floor decodes local files)"
        )
        print(
            f"  fetch ffmpeg / floor   = {margin['http_ffmpeg'] / margin['floor']:.2f}x   (whole: "
            f"{whole['http_ffmpeg'] / whole['floor']:.2f}x; yt-dlp's ffmpeg process, remux and file)"
        )
        print(
            f"  design / floor         = {margin['direct'] / margin['floor']:.2f}x   (whole: "
            f"{whole['direct'] / whole['floor']:.2f}x; no window copy, no file)"
        )
    if pool is not None:
        print(f"  3 proxies / 1 proxy    = {pool[1][6] / pool[0][6]:.2f}x clips/hour")
    data = {
        "clips": n,
        "cpu_s_per_clip_whole": whole,
        "cpu_s_per_clip_margin": margin,
        "cpu_s_startup": startup,
        "bytes": None
        if http is None
        else {
            **{
                name: {k: http[name][k] for k in ("short", "long", "dash") if k in http[name]}
                for name in ("job", "ffmpeg", "direct")
            },
            "source": http["source"],
        },
        "pool": pool,
    }
    written = write_results("preprocess", argv, data=data, results_dir=args.results)
    print(f"results: {', '.join(written)}")
    if job is not None and job1 is not None:
        print(
            f"  job / ours in-process  = {margin['job'] / margin['ours']:.2f}x   (whole: "
            f"{whole['job'] / whole['ours']:.2f}x; Ray start-up ≈ {job1.cpu_seconds - margin['job']:.1f} "
            f"cpu_s per job)"
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        spec = json.loads(sys.argv[2])
        if spec["fetch"] == "direct":
            direct_worker(spec["paths"], spec["frame_size"], spec["start"])
        else:
            ours_worker(spec["paths"], spec["frame_size"], spec["skip_nonref"], spec["start"], spec["fetch"])
        sys.exit(0)
    sys.exit(main())
