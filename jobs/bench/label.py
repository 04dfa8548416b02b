"""``avfusion bench label``: the label job against its floors, every process counted.

On folders of synthetic clips, measured in the same run, each side as its own command
through ``run_measured`` (CPU of the whole process tree, Ray workers included; peak
summed PSS of the tree; wall from launch to the last process's exit):

* the job (Ray Data: decode tasks → model actor → Parquet parts);
* (a) decode-only: the same Ray Data decode stage over the same files, nothing else;
* (b) naive: the natural loop a user would write — one Python process, the model
  loaded once, then per clip: decode it, run the model on it, keep the row; Parquet
  written at the end — with torch's default threads (all cores);
* (c) the same loop with one torch thread, as Ray runs the job's model actor
  (``OMP_NUM_THREADS=1`` for a 1-CPU actor): on a small, busy machine the default
  threads mostly wait on each other, so (c) is the stronger baseline.

Every side's model runs on the one device ``--device`` chose (the job's model actor
gets a GPU exactly when it is CUDA; the naive loops are told the same device), and
the results say which.

Start-up is handled alike: every side runs at ``--small`` and ``--large`` clips, and
besides the whole-run rate the table gives the rate at the margin,
``(large − small) / (wall_large − wall_small)``, which removes each side's own fixed
cost (Ray start-up for the job and decode-only, imports and model load for naive).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from jobs import refusing
from jobs.bench.common import (
    RESULTS_DIR,
    accounting,
    bench_device,
    print_table,
    python_cmd,
    run_measured,
    write_results,
)

if TYPE_CHECKING:
    import torch


def make_folder(folder: Path, n: int, seconds: float) -> Path:
    from avfusion.synth import SynthSpec, make_class_conditional_set

    make_class_conditional_set(
        folder,
        max(1, -(-n // 6)),
        SynthSpec(width=96, height=96, duration=seconds, fps=8, sample_rate=16_000),
    )
    for extra in sorted(folder.glob("*.mp4"))[n:]:
        extra.unlink()
    return folder


def make_checkpoint(folder: Path, clips: Path, seconds: float) -> Path:
    import torch

    from avfusion.config import ClipSpec
    from avfusion.distributed import DistEnv
    from avfusion.train import TrainConfig, train
    from jobs.bench.common import build_shards

    shards = build_shards(
        clips,
        clips / "labels.csv",
        folder / "shards",
        ClipSpec(clip_seconds=seconds, frame_size=64),
        all_train=True,
    )
    cfg = TrainConfig(
        shards=shards,
        out=str(folder / "run"),
        epochs=1,
        steps_per_epoch=1,
        batch_size=4,
        workers=0,
        val_split="none",
    )
    train(cfg, DistEnv(0, 1, 0, torch.device("cpu")))
    return folder / "run" / "last.pt"


def decode_only_worker(folder: str, checkpoint: str, cpus: int) -> None:
    """Child-process body: the label job's own decode stage alone, on embedded Ray."""
    from dataclasses import replace

    from avfusion.checkpoint import load as load_checkpoint
    from avfusion.config import ClipSpec
    from avfusion.executor.ray_data import pipeline_dataset
    from avfusion.executor.ray_tasks import ray_session
    from avfusion.labelling.run import LabelConfig, build_items, list_inputs, pipeline

    cfg = LabelConfig(input=folder, out="", checkpoint=checkpoint)
    clip = ClipSpec(**load_checkpoint(checkpoint)["clip"])
    items = build_items(list_inputs(folder, (".mp4",)), folder, done=set())
    with ray_session(None, cpus, data=True):
        n = pipeline_dataset(replace(pipeline(cfg, clip), model=None), items).count()
    assert n == len(items), (n, len(items))


def naive_worker(folder: str, checkpoint: str, out: str, threads: int = 0, device: str = "cpu") -> None:
    """Child-process body: the natural per-clip loop, model loaded once on ``device``
    (``threads``: torch intra-op threads, 0 = torch's default), through the job's own
    decode and predict functions, one file per call."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    if threads:
        torch.set_num_threads(threads)

    from avfusion.checkpoint import load as load_checkpoint
    from avfusion.config import ClipSpec
    from avfusion.labelling.run import build_items, list_inputs
    from avfusion.labelling.schema import rows_to_batch, to_table
    from avfusion.labelling.worker import DecodeRows, Predictor

    clip = ClipSpec(**load_checkpoint(checkpoint)["clip"])
    decoder, predictor = DecodeRows(clip), Predictor(checkpoint, device=device)
    tables = []
    for item in build_items(list_inputs(folder, (".mp4",)), folder, done=set()):
        rows = decoder.decode_file(item["path"], item["key"], item["file_size"], item["mtime_ns"])
        tables.append(to_table(predictor(rows_to_batch(rows))))
    pq.write_table(pa.concat_tables(tables), out)


def side_commands(folder: Path, out: Path, checkpoint: Path, cpus: int, device: torch.device) -> dict:
    """Each side's command line, the model of every side on ``device``: the job's model
    actor gets a GPU exactly when ``device`` is CUDA (its device follows its grant),
    the naive loops are told ``device``."""
    bench = "jobs.bench.label"

    def naive(name: str, threads: str) -> list[str]:
        parquet = str(out / f"{name}.parquet")
        return python_cmd(
            bench, "--naive-worker", str(folder), str(checkpoint), parquet, threads, str(device)
        )

    return {
        "job": python_cmd(
            "jobs.label",
            str(folder),
            str(out / "job"),
            "--checkpoint",
            str(checkpoint),
            "--num-cpus",
            str(cpus),
            "--gpus-per-actor",
            "1" if device.type == "cuda" else "0",
        ),
        "decode": python_cmd(bench, "--decode-only-worker", str(folder), str(checkpoint), str(cpus)),
        "naive": naive("naive", "0"),
        "naive1": naive("naive1", "1"),
    }


def _sides(folder: Path, out: Path, checkpoint: Path, cpus: int, env: dict, device: torch.device) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    commands = side_commands(folder, out, checkpoint, cpus, device)
    return {side: run_measured(cmd, env=env) for side, cmd in commands.items()}


@refusing("avfusion bench label")  # a device that cannot be had: one line, exit 2
def main(argv: list[str] | None = None) -> int:
    import os

    p = argparse.ArgumentParser(prog="avfusion bench label", description=__doc__.split("\n\n")[0])
    p.add_argument("--small", type=int, default=50)
    p.add_argument("--large", type=int, default=300)
    p.add_argument("--seconds", type=float, default=2.0, help="clip length (the model's window)")
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where every side's model runs (the job: a GPU per model actor when cuda)",
    )
    p.add_argument("--results", default=RESULTS_DIR, help="folder of the results files")
    args = p.parse_args(argv)
    device = bench_device(args.device)
    env = dict(os.environ, RAY_AUTH_MODE="token")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        large = make_folder(root / "large", args.large, args.seconds)
        small = root / "small"
        small.mkdir()
        for f in sorted(large.glob("*.mp4"))[: args.small]:
            os.symlink(f, small / f.name)
        (small / "labels.csv").write_text((large / "labels.csv").read_text())
        checkpoint = make_checkpoint(root, small, args.seconds)
        t0 = time.perf_counter()
        runs = {
            "small": _sides(small, root / "out_small", checkpoint, args.cpus, env, device),
            "large": _sides(large, root / "out_large", checkpoint, args.cpus, env, device),
        }
        print(f"(measured in {time.perf_counter() - t0:.0f} s)")
    sizes = {"small": args.small, "large": args.large}
    torch_threads = torch.get_num_threads()
    names = {
        "job": f"the job (Ray Data, {args.cpus} CPUs, model actor on {device.type})",
        "decode": "(a) decode-only, same Ray Data stage",
        "naive": f"(b) naive per-clip loop, model loaded once, torch {torch_threads} threads",
        "naive1": "(c) the same naive loop, 1 torch thread",
    }
    rate, margin, cpu = {}, {}, {}
    rows = []
    for side in ("job", "decode", "naive", "naive1"):
        s, l_ = runs["small"][side], runs["large"][side]
        rate[side] = args.large / l_.wall_seconds
        dt = l_.wall_seconds - s.wall_seconds  # <= 0 when start-up noise swamps the extra clips
        margin[side] = (args.large - args.small) / dt if dt > 0 else float("nan")
        cpu[side] = (l_.cpu_seconds - s.cpu_seconds) / (args.large - args.small)
        rows.append(
            (
                names[side],
                rate[side],
                margin[side],
                l_.cpu_seconds / args.large,
                cpu[side],
                s.max_rss_mb,
                l_.max_rss_mb,
            )
        )
    print_table(
        f"Labelling 96x96 {args.seconds:g} s synthetic clips ({sizes['small']} and {sizes['large']} clips), "
        f"every side's model on {device}",
        rows,
        (
            "method",
            f"clips/s whole ({args.large})",
            "clips/s margin",
            "cpu_s/clip whole",
            "cpu_s/clip margin",
            f"peak_PSS_MB ({args.small})",
            f"peak_PSS_MB ({args.large})",
        ),
    )
    print(
        f"\nhow accounted: {accounting()}; 'margin' = ({args.large} - {args.small} clips) / "
        f"(difference of the two runs' wall or CPU), each side's own start-up cancelling."
    )
    print(
        f"job / decode-only = {margin['job'] / margin['decode']:.2f}x at the margin "
        f"({rate['job'] / rate['decode']:.2f}x whole); "
        f"job / naive = {margin['job'] / margin['naive']:.2f}x at the "
        f"margin ({rate['job'] / rate['naive']:.2f}x whole); job / naive 1-thread = "
        f"{margin['job'] / margin['naive1']:.2f}x at the margin ({rate['job'] / rate['naive1']:.2f}x whole); "
        f"job tree peak PSS "
        f"{runs['small']['job'].max_rss_mb:.0f} MB at {args.small} clips vs "
        f"{runs['large']['job'].max_rss_mb:.0f} MB at {args.large}; every model on {device}"
    )
    written = write_results(
        "label",
        argv,
        data={
            "device": str(device),
            "clips": sizes,
            "runs": {size: {side: asdict(u) for side, u in sides.items()} for size, sides in runs.items()},
            "clips_per_s_whole": rate,
            "clips_per_s_margin": margin,
            "cpu_s_per_clip_margin": cpu,
        },
        results_dir=args.results,
    )
    print(f"results: {', '.join(written)}")
    return 0


def naive_args(argv: list[str]) -> dict:
    """``naive_worker``'s arguments from a child's ``--naive-worker ...`` command line."""
    folder, checkpoint, out, threads, device = argv[1:6]
    return {"folder": folder, "checkpoint": checkpoint, "out": out, "threads": int(threads), "device": device}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--decode-only-worker":
        decode_only_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "--naive-worker":
        naive_worker(**naive_args(sys.argv[1:]))
        sys.exit(0)
    sys.exit(main())
