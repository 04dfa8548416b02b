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
(Python imports for ours, ffmpeg's own for each ffmpeg run, Ray for the job). "margin"
subtracts a start-up measured in the same run *on each side*: ours minus the same
Python worker given zero clips; each ffmpeg run minus ffmpeg on a one-frame clip; the
job as (job on N clips − job on 1 clip) / (N − 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from jobs.bench.common import accounting, print_table, python_cmd, run_measured


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


def ours_worker(paths: list[str], frame_size: int, skip_nonref: bool = False) -> None:
    """Child-process body: the job's per-clip stage (``process_clip``: decode, JPEG/FLAC
    encode) on local files, sequentially, one thread (imports happen even for 0 clips)."""
    import tempfile

    from avfusion.config import ClipSpec
    from avfusion.decode import DecodeLimits
    from avfusion.preprocess.shard import PreprocessConfig, process_clip
    from avfusion.sources import ClipTask
    from shards.manifest import Failure

    cfg = PreprocessConfig(
        clip=ClipSpec(frame_size=frame_size), limits=DecodeLimits(threads=1, skip_nonref=skip_nonref)
    )
    with tempfile.TemporaryDirectory() as workdir:
        for p in paths:
            result = process_clip(ClipTask(key=Path(p).stem, source=p), cfg, {}, Path(workdir))
            if isinstance(result, Failure):  # a benchmark of failures would measure nothing
                raise SystemExit(f"{p}: {result.kind}: {result.message}")


def _ours(paths: list[str], frame_size: int, env: dict, skip_nonref: bool = False):
    return run_measured(
        python_cmd(
            "jobs.bench.preprocess",
            "--worker",
            json.dumps({"paths": paths, "frame_size": frame_size, "skip_nonref": skip_nonref}),
        ),
        env=env,
    )


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avfusion bench preprocess", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--frame-size", type=int, default=224)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs for the preprocess job's embedded Ray")
    parser.add_argument("--no-job", action="store_true", help="skip the Ray job rows")
    parser.add_argument("--workdir", type=Path, help="where to write the clips (default: a temp dir)")
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
        ours = _ours(paths, args.frame_size, env)
        fast = _ours(paths, args.frame_size, env, skip_nonref=True)
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
    margin = {
        "ours": (ours.cpu_seconds - py_start.cpu_seconds) / n,
        "fast": (fast.cpu_seconds - py_start.cpu_seconds) / n,
        "floor": whole["floor"] - ff0,
        "seed": whole["seed"] - 2 * ff0,
    }
    rows = [
        ("ours (decode + JPEG/FLAC encode), 1 process", whole["ours"], margin["ours"], ours.max_rss_mb),
        ("ours, skip_nonref (frames within 1)", whole["fast"], margin["fast"], fast.max_rss_mb),
        (
            "floor: ffmpeg -threads 1 -f null, per clip",
            whole["floor"],
            margin["floor"],
            max(u.max_rss_mb for u in floor),
        ),
        (
            "seed-style: 2 ffmpeg -threads 1 per clip",
            whole["seed"],
            margin["seed"],
            max(max(a.max_rss_mb, b.max_rss_mb) for a, b in seed),
        ),
    ]
    if job is not None and job1 is not None:  # measured together
        whole["job"] = job.cpu_seconds / n
        margin["job"] = (job.cpu_seconds - job1.cpu_seconds) / max(1, n - 1)
        rows.append(
            (
                f"the job: avfusion preprocess, Ray, {args.cpus} CPUs",
                whole["job"],
                margin["job"],
                job.max_rss_mb,
            )
        )
    print_table(
        f"CPU seconds per clip over {n} clips",
        rows,
        ("method", "cpu_s/clip whole", "cpu_s/clip margin", "peak_PSS_MB (tree)"),
    )
    print(f"\nhow accounted: {accounting()}.")
    print(
        f"start-up measured in this run and subtracted for 'margin': Python worker with 0 clips "
        f"{py_start.cpu_seconds:.2f} cpu_s; ffmpeg on a 1-frame clip {ff0:.3f} cpu_s per run"
        + (
            f"; Ray job on 1 clip {job1.cpu_seconds:.2f} cpu_s ({job1.wall_seconds:.1f} s wall)"
            if job1
            else ""
        )
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
        ours_worker(spec["paths"], spec["frame_size"], spec.get("skip_nonref", False))
        sys.exit(0)
    sys.exit(main())
