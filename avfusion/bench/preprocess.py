"""``avfusion bench preprocess``: CPU seconds per clip, ours vs ffmpeg floors.

On N synthetic 10 s 640×360 30 fps H.264+AAC clips (local files), each method runs in
its own child process so CPU time and peak RSS are its own:

* ours: ``decode_clip`` + ``encode_sample`` (JPEG frames, FLAC audio), one thread;
* floor: ``ffmpeg -i clip -f null -`` (full decode of both streams, nothing written);
* seed-style: one ffmpeg for a 16 kHz mono WAV + one for 8 frames as JPEG, per clip.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from avfusion.bench.common import print_table, python_cmd, run_measured


def make_clips(folder: Path, n: int) -> list[Path]:
    from avfusion.synth import SynthSpec, write_clip

    spec = SynthSpec(width=640, height=360, fps=30, duration=10.0, sample_rate=44_100, crf=23)
    return [write_clip(folder / f"bench{i:03d}.mp4", spec, seed=i).path for i in range(n)]


def ours_worker(paths: list[str], frame_size: int, skip_nonref: bool = False) -> None:
    """Child-process body: our per-clip work, sequentially."""
    from avfusion.config import ClipSpec
    from avfusion.decode import DecodeLimits, decode_clip
    from shards.writer import encode_sample

    spec = ClipSpec(frame_size=frame_size)
    for p in paths:
        clip = decode_clip(p, spec, limits=DecodeLimits(threads=1, skip_nonref=skip_nonref))
        encode_sample(Path(p).stem, clip.waveform, clip.frames, 0, {"k": 1}, spec.sample_rate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avfusion bench preprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--frame-size", type=int, default=224)
    parser.add_argument("--workdir", type=Path, help="where to write the clips (default: a temp dir)")
    args = parser.parse_args(argv)
    import imageio_ffmpeg

    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"writing {args.clips} synthetic 10 s 640x360 30 fps H.264+AAC clips to {folder}")
        clips = make_clips(folder, args.clips)
        n = len(clips)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        paths = [str(c) for c in clips]
        ours = run_measured(python_cmd("avfusion.bench.preprocess", "--worker", json.dumps(
            {"paths": paths, "frame_size": args.frame_size})), env=env)
        fast = run_measured(python_cmd("avfusion.bench.preprocess", "--worker", json.dumps(
            {"paths": paths, "frame_size": args.frame_size, "skip_nonref": True})), env=env)
        baseline = run_measured(python_cmd("avfusion.bench.preprocess", "--worker", json.dumps(
            {"paths": [], "frame_size": args.frame_size})), env=env)
        floor = [run_measured([ffmpeg, "-v", "error", "-threads", "1", "-i", str(c), "-f", "null", "-"]) for c in clips]
        seed = []
        for c in clips:
            out = Path(tmp) / c.stem
            out.mkdir(exist_ok=True)
            wav = run_measured([ffmpeg, "-v", "error", "-y", "-i", str(c), "-vn", "-ac", "1", "-ar", "16000",
                                str(out / "a.wav")])
            jpg = run_measured([ffmpeg, "-v", "error", "-y", "-i", str(c), "-vf", "fps=8/10,scale=224:224",
                                "-frames:v", "8", str(out / "f%d.jpg")])
            seed.append((wav, jpg))

    ours_cpu = (ours.cpu_seconds - baseline.cpu_seconds) / n  # minus interpreter start-up and imports
    fast_cpu = (fast.cpu_seconds - baseline.cpu_seconds) / n
    floor_cpu = sum(u.cpu_seconds for u in floor) / n
    seed_cpu = sum(a.cpu_seconds + b.cpu_seconds for a, b in seed) / n
    rows = [
        ("ours (decode + JPEG/FLAC encode)", ours_cpu, ours_cpu / floor_cpu, ours.max_rss_mb),
        ("ours, skip_nonref (frames within 1)", fast_cpu, fast_cpu / floor_cpu, fast.max_rss_mb),
        ("floor: ffmpeg -f null (full decode)", floor_cpu, 1.0, max(u.max_rss_mb for u in floor)),
        ("seed-style: 2 ffmpeg runs per clip", seed_cpu, seed_cpu / floor_cpu,
         max(max(a.max_rss_mb, b.max_rss_mb) for a, b in seed)),
    ]
    print_table(f"CPU seconds per clip over {n} clips (one thread each)", rows,
                ("method", "cpu_s/clip", "x floor", "peak_rss_MB"))
    print(f"\nours / floor = {ours_cpu / floor_cpu:.2f}x (target <= 1.0x); "
          f"seed-style / ours = {seed_cpu / ours_cpu:.2f}x faster (target >= 3x; "
          f"{seed_cpu / fast_cpu:.2f}x with skip_nonref); "
          f"interpreter+imports baseline {baseline.cpu_seconds:.2f} cpu_s, {baseline.max_rss_mb:.0f} MB subtracted")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        spec = json.loads(sys.argv[2])
        ours_worker(spec["paths"], spec["frame_size"], spec.get("skip_nonref", False))
        sys.exit(0)
    sys.exit(main())
