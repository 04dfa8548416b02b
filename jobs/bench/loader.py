"""``avfusion bench loader``: CPU work per training clip of the input pipeline.

Paths, each run as its own process and accounted by ``common.run_measured`` (CPU =
user + sys of the whole process tree, so threads and workers count alike):

* floor: bare JPEG (PIL) + FLAC decode of the clips' bytes already in memory;
* today: the per-clip path — PIL decode + numpy augmentation (``reference_augment.Augment``)
  per clip in the loader, then collate;
* new, loader: what stays on the CPU when the device is a GPU — tar parsing, FLAC
  decode, JPEG bytes into one buffer (``TrainStream`` compact batches);
* new, device=cpu: the loader plus batched JPEG decode and ``augment.BatchAugment``
  run on the CPU (the same code a GPU runs);
* new, device=cuda (where present): the loader plus decode and augmentation on the
  GPU; its CPU figure is the host's share (launches, pinning, copies).

Each path runs in pairs with different numbers of batches (the cheap paths 8x as
many); the per-clip cost is the difference of a pair's CPU over the difference in
clips (start-up, and filling the shuffle buffer, cancel), the median over pairs.
The recipe is ``vggsound``'s augmentation (content on, modality dropout, mixup).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

from jobs.bench.common import accounting, print_table, python_cmd, run_measured

PATHS = ("floor", "today", "new-loader", "new-cpu", "new-cuda")
CHEAP_RUNS = 8  # the few-ms paths run 8x the batches, so their margin stands above start-up noise


def recipe():
    """The vggsound preset's augmentation and mixup settings."""
    from avfusion.augment import AugmentConfig
    from avfusion.config import from_dict, load_yaml, resolve_config

    train = load_yaml(resolve_config("vggsound"))["train"]
    return (
        from_dict(AugmentConfig, train.get("augment")),
        train.get("mixup_alpha", 0.0),
        train.get("mixup_prob", 0.5),
    )


def make_shards(root: Path, clips: int, frame_size: int) -> str:
    """Real-size shards from the bundled sample clips (10 s, 8 frames) at ``frame_size``."""
    import csv
    import shutil

    from avfusion import sample_data
    from avfusion.config import ClipSpec
    from jobs.bench.common import build_shards

    folder = root / "clips"
    folder.mkdir(parents=True, exist_ok=True)
    with open(sample_data.labels_csv()) as f:
        rows = list(csv.reader(f))
    rows = rows[:: max(1, len(rows) // clips)][:clips]
    with open(folder / "labels.csv", "w", newline="") as f:
        for r in rows:
            name = f"{r[0]}_{int(r[1]):06d}.mp4"
            shutil.copy(sample_data.clips_dir() / name, folder / name)
            csv.writer(f).writerow(r)
    return build_shards(
        folder,
        folder / "labels.csv",
        root / f"shards{frame_size}",
        ClipSpec(frame_size=frame_size),
        all_train=True,
    )


def _floor(urls: list[str], clips: int) -> None:
    import tarfile

    import soundfile as sf

    from shards.reader import rgb_from_jpeg

    members = []
    for url in urls:
        with tarfile.open(url) as tar:
            for m in tar.getmembers():
                member = tar.extractfile(m)
                assert member is not None  # a shard holds regular files only
                members.append((m.name, member.read()))
    done = 0
    while done < clips:
        for name, data in members:
            if name.endswith(".jpg"):
                rgb_from_jpeg(data)
            elif name.endswith(".flac"):
                sf.read(io.BytesIO(data), dtype="float32")
                done += 1
                if done == clips:
                    break


def measure(path: str, shards: str, batches: int, batch_size: int) -> None:
    """One measured run (in its own process): ``batches`` training batches by ``path``."""
    import torch

    from avfusion.augment import BatchAugment, mixup
    from avfusion.loader import Dataset, TrainStream
    from jobs.bench.reference_augment import Augment

    torch.set_num_threads(1)
    data = Dataset.open(shards)
    if path == "floor":
        return _floor(data.urls, batches * batch_size)
    aug_cfg, alpha, prob = recipe()
    today = path == "today"
    stream = TrainStream(
        data.urls,
        batch_size,
        split=None,
        batches_per_epoch=batches,
        compact_frames=not today,
        augment=Augment(aug_cfg, 0) if today else None,
    )
    device = torch.device("cuda" if path == "new-cuda" else "cpu")
    batch_aug = BatchAugment(aug_cfg, num_classes=len(data.label_map), mixup_alpha=alpha, mixup_prob=prob)
    for step, batch in enumerate(stream):
        if today:
            mixup(batch, len(data.label_map), alpha, prob)
        elif path != "new-loader":
            batch = batch.pin_memory() if device.type == "cuda" else batch
            batch_aug(batch, device, 0, step)
    if device.type == "cuda":
        torch.cuda.synchronize()


def per_clip_cpu(path: str, shards: str, batch_size: int, small: int, large: int, repeat: int = 1) -> float:
    """CPU seconds per clip at the margin between runs of ``small`` and ``large``
    batches, the median over ``repeat`` pairs (other processes on the machine make
    single pairs noisy)."""
    import statistics

    scale = CHEAP_RUNS if path in ("floor", "new-loader") else 1
    small, large = small * scale, large * scale

    def cpu(n: int) -> float:
        return run_measured(
            python_cmd(
                __spec__.name,
                "--measure",
                path,
                "--shards",
                shards,
                "--batches",
                str(n),
                "--batch-size",
                str(batch_size),
            )
        ).cpu_seconds

    margins = [(cpu(large) - cpu(small)) / ((large - small) * batch_size) for _ in range(repeat)]
    return max(statistics.median(margins), 1e-9)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="avfusion bench loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="224,112", help="frame sizes to build and measure")
    p.add_argument("--clips", type=int, default=48, help="bundled clips per shard set")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", default="2,6", help="the two run lengths, in batches")
    p.add_argument("--repeat", type=int, default=3, help="run pairs per path (the median is kept)")
    p.add_argument("--shards", help="an existing shard folder per size, SIZE=PATH[,SIZE=PATH]")
    p.add_argument("--measure", choices=PATHS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:  # one measured run, in the process run_measured started
        measure(args.measure, args.shards, int(args.batches), args.batch_size)
        return 0
    import torch

    small, large = (int(x) for x in args.batches.split(","))
    given = dict(kv.split("=", 1) for kv in args.shards.split(",")) if args.shards else {}
    paths = [x for x in PATHS if x != "new-cuda" or torch.cuda.is_available()]
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        cost = {}
        for size in (int(s) for s in args.sizes.split(",")):
            shards = given.get(str(size)) or make_shards(Path(tmp) / str(size), args.clips, size)
            for path in paths:
                cost[size, path] = per_clip_cpu(path, shards, args.batch_size, small, large, args.repeat)
                print(f"  {size}² {path:<10} {1000 * cost[size, path]:7.2f} ms CPU per clip", file=sys.stderr)
    sizes = sorted({s for s, _ in cost}, reverse=True)
    rows = [
        (
            path,
            *[
                v
                for s in sizes
                for v in (1000 * cost[s, path], 1 / cost[s, path], cost[s, path] / cost[s, "today"])
            ],
        )
        for path in paths
    ]
    headers = (
        "path",
        *[h for s in sizes for h in (f"ms CPU/clip {s}²", f"clips/s/core {s}²", f"x today {s}²")],
    )
    print_table(
        f"Training input pipeline, vggsound augmentation, batch {args.batch_size} (median margin of "
        f"{args.repeat} pairs of {small} vs {large} batches; {time.time() - t0:.0f} s)",
        rows,
        headers,
    )
    top = max(sizes)
    loader_rate = 1 / cost[top, "new-loader"]
    ratio = cost[top, "new-loader"] / cost[top, "today"]
    print(
        f"\nat {top}²: CPU per clip on the GPU path (loader only) = {ratio:.2f}x today's (goal <= 0.33x); "
        f"cores per GPU at 1000 / 3000 clips/s: {1000 / loader_rate:.1f} / "
        f"{3000 / loader_rate:.1f} (today: {1000 * cost[top, 'today']:.0f} / {3000 * cost[top, 'today']:.0f})"
    )
    print(accounting())
    return 0


if __name__ == "__main__":
    sys.exit(main())
