"""``avfusion bench label``: the label job's clips/s against its floors, and its memory.

On folders of synthetic clips, measured in the same run:
* the job (Ray Data: decode tasks → model actor → Parquet parts), clips/s;
* (a) decode-only: the same Ray Data decode stage over the same files, nothing else;
* (b) a naive loop calling ``avfusion.label.predict`` per clip (model loaded per call);
* peak RSS of the job's driver process at ``--small`` and ``--large`` clips (flat =
  rows stream to part files instead of piling up).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from avfusion.bench.common import print_table, python_cmd, run_measured


def make_folder(folder: Path, n: int, seconds: float) -> Path:
    from avfusion.synth import SynthSpec, make_class_conditional_set

    make_class_conditional_set(folder, max(1, -(-n // 6)), SynthSpec(width=96, height=96, duration=seconds, fps=8,
                                                                      sample_rate=16_000))
    for extra in sorted(folder.glob("*.mp4"))[n:]:
        extra.unlink()
    return folder


def make_checkpoint(folder: Path, clips: Path, seconds: float) -> Path:
    from avfusion.bench.common import build_shards
    from avfusion.config import ClipSpec
    from avfusion.distributed import DistEnv
    from avfusion.train import TrainConfig, train

    import torch

    shards = build_shards(clips, clips / "labels.csv", folder / "shards", ClipSpec(clip_seconds=seconds, frame_size=64),
                          all_train=True)
    cfg = TrainConfig(shards=shards, out=str(folder / "run"), epochs=1, steps_per_epoch=1, batch_size=4,
                      workers=0, val_split="none")
    train(cfg, DistEnv(0, 1, 0, torch.device("cpu")))
    return folder / "run" / "last.pt"


def decode_only_rate(folder: Path, checkpoint: Path, cpus: int) -> float:
    import ray

    from avfusion.config import ClipSpec
    from avfusion.label import DecodeRows, file_identity
    from avfusion.train import load_checkpoint
    from jobs._ray import ray_session
    from jobs.label import list_inputs

    clip = ClipSpec(**load_checkpoint(checkpoint)["clip"])
    paths = list_inputs(str(folder), (".mp4",))
    items = [{"path": p, "key": p, "file_size": file_identity(p)[0], "mtime_ns": file_identity(p)[1]} for p in paths]
    with ray_session(None, cpus):
        t0 = time.perf_counter()
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // 4))
        n = ds.map_batches(DecodeRows(clip), batch_size=4, num_cpus=1).count()
        return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="avfusion bench label", description=__doc__.split("\n\n")[0])
    p.add_argument("--small", type=int, default=100)
    p.add_argument("--large", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=2.0, help="clip length (the model's window)")
    p.add_argument("--naive", type=int, default=20, help="clips for the per-clip predict loop")
    p.add_argument("--cpus", type=int, default=2)
    args = p.parse_args(argv)
    from avfusion.label import predict

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small = make_folder(root / "small", args.small, args.seconds)
        checkpoint = make_checkpoint(root, small, args.seconds)
        job_small = run_measured(python_cmd("jobs.label", str(small), str(root / "out_small"), "--checkpoint",
                                            str(checkpoint), "--num-cpus", str(args.cpus)))
        naive_paths = sorted(small.glob("*.mp4"))[: args.naive]
        t0 = time.perf_counter()
        for path in naive_paths:
            predict(path, checkpoint)
        naive_rate = len(naive_paths) / (time.perf_counter() - t0)
        large = make_folder(root / "large", args.large, args.seconds)
        decode_rate = decode_only_rate(large, checkpoint, args.cpus)  # same files as the large job run
        job_large = run_measured(python_cmd("jobs.label", str(large), str(root / "out_large"), "--checkpoint",
                                            str(checkpoint), "--num-cpus", str(args.cpus)))
    job_rate_small = args.small / job_small.wall_seconds
    job_rate_large = args.large / job_large.wall_seconds
    print_table(f"Labelling 96x96 {args.seconds:g} s synthetic clips, {args.cpus} CPUs (wall clock, start-up included)", [
        (f"job, {args.small} clips", job_rate_small, job_rate_small / decode_rate, job_small.max_rss_mb),
        (f"job, {args.large} clips", job_rate_large, job_rate_large / decode_rate, job_large.max_rss_mb),
        (f"(a) decode-only, same Ray Data stage, {args.large} clips", decode_rate, 1.0, float("nan")),
        (f"(b) naive predict() per clip, {len(naive_paths)} clips", naive_rate, naive_rate / decode_rate,
         float("nan")),
    ], ("method", "clips/s", "x decode-only", "driver_peak_rss_MB"))
    print(f"\njob / decode-only = {job_rate_large / decode_rate:.2f}x (target >= 0.8x); "
          f"job / naive = {job_rate_large / naive_rate:.1f}x (target >= 3x); driver peak RSS "
          f"{job_small.max_rss_mb:.0f} MB at {args.small} clips vs {job_large.max_rss_mb:.0f} MB at {args.large}")
    return 0
