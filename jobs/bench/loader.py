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
* new, device=cuda (``--device auto`` where CUDA is present, or ``cuda``): the loader
  plus decode and augmentation on the GPU; its CPU figure is the host's share
  (launches, pinning, copies).

On the two batched paths each batch's decode + augmentation is a
``common.DeviceTimer`` window, so device time (CUDA events; the wall clock on the
CPU) is reported apart from the host's wall and CPU. The windows wait for the device
with blocking events, so the host sleeps rather than spins in those waits and the
host CPU figure is work (a wait inside torchvision's decoder still spins).

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
from dataclasses import asdict, dataclass
from pathlib import Path

from jobs import refusing
from jobs.bench.common import (
    RESULTS_DIR,
    DeviceTimer,
    accounting,
    bench_device,
    print_table,
    python_cmd,
    run_measured,
    write_results,
)

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


def measure(path: str, shards: str, batches: int, batch_size: int) -> DeviceTimer | None:
    """One measured run (in its own process): ``batches`` training batches by ``path``.
    On the batched paths each batch's decode and augmentation after the first is one
    ``DeviceTimer`` window (returned): device time apart from the host's."""
    import torch

    from avfusion.augment import BatchAugment, mixup
    from avfusion.loader import Dataset, TrainStream
    from jobs.bench.reference_augment import Augment

    torch.set_num_threads(1)
    data = Dataset.open(shards)
    if path == "floor":
        _floor(data.urls, batches * batch_size)
        return None
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
    timer = DeviceTimer(device)
    for step, batch in enumerate(stream):
        if today:
            mixup(batch, len(data.label_map), alpha, prob)
        elif path != "new-loader":
            batch = batch.pin_memory() if device.type == "cuda" else batch
            if step == 0:  # warm-up, untimed: lazy imports, decoder and kernel set-up
                batch_aug(batch, device, 0, step)
                continue
            with timer:  # drained at both ends with blocking waits: the host sleeps, not spins
                batch_aug(batch, device, 0, step)
    return timer if timer.windows else None


@dataclass(frozen=True, kw_only=True)
class PathCost:
    """Seconds per clip: ``cpu``, the host CPU of the whole process tree at the margin;
    on the batched paths also ``device`` (the decode + augmentation windows' device
    time: CUDA events, the wall clock on the CPU) and ``wall`` (those windows on the
    host's clock) and ``window_cpu`` (this process's CPU in them), over the windows
    after each run's warm-up batch."""

    cpu: float
    device: float | None = None
    wall: float | None = None
    window_cpu: float | None = None


def per_clip_cost(
    path: str, shards: str, batch_size: int, small: int, large: int, repeat: int = 1, *, scratch: str
) -> PathCost:
    """Costs per clip at the margin between runs of ``small`` and ``large`` batches,
    the median over ``repeat`` pairs (other processes on the machine make single pairs
    noisy); each run leaves its device timing in ``scratch`` (medians over runs)."""
    import statistics

    from avfusion import storage

    scale = CHEAP_RUNS if path in ("floor", "new-loader") else 1
    small, large = small * scale, large * scale
    runs = iter(range(1 << 30))

    def run(n: int) -> tuple[float, dict | None]:
        timing = storage.join(scratch, f"timing-{path}-{next(runs)}.json")
        cpu = run_measured(
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
                "--timing",
                timing,
            )
        ).cpu_seconds
        return cpu, (storage.read_json(timing) if storage.exists(timing) else None)

    cpu, device, wall, window_cpu = [], [], [], []
    for _ in range(repeat):
        (cpu_s, t_s), (cpu_l, t_l) = run(small), run(large)
        cpu.append((cpu_l - cpu_s) / ((large - small) * batch_size))
        for t in (t_s, t_l):
            if t and t["windows"]:
                device.append(t["device_seconds"] / (t["windows"] * batch_size))
                wall.append(t["wall_seconds"] / (t["windows"] * batch_size))
                window_cpu.append(t["cpu_seconds"] / (t["windows"] * batch_size))
    return PathCost(
        cpu=max(statistics.median(cpu), 1e-9),
        device=max(statistics.median(device), 1e-9) if device else None,
        wall=max(statistics.median(wall), 1e-9) if wall else None,
        window_cpu=max(statistics.median(window_cpu), 1e-9) if window_cpu else None,
    )


@refusing("avfusion bench loader")  # a device that cannot be had: one line, exit 2
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="avfusion bench loader", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="224,112", help="frame sizes to build and measure")
    p.add_argument("--clips", type=int, default=48, help="bundled clips per shard set")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--batches", default="2,6", help="the two run lengths, in batches")
    p.add_argument("--repeat", type=int, default=3, help="run pairs per path (the median is kept)")
    p.add_argument("--shards", help="an existing shard folder per size, SIZE=PATH[,SIZE=PATH]")
    p.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="cpu: leave out the CUDA path; auto: include it where CUDA is present",
    )
    p.add_argument("--results", default=RESULTS_DIR, help="folder of the results files")
    p.add_argument("--measure", choices=PATHS, help=argparse.SUPPRESS)
    p.add_argument("--timing", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:  # one measured run, in the process run_measured started
        timer = measure(args.measure, args.shards, int(args.batches), args.batch_size)
        if timer is not None and args.timing:
            from avfusion import storage

            storage.write_json(args.timing, timer.as_dict())
        return 0
    device = bench_device(args.device)
    small, large = (int(x) for x in args.batches.split(","))
    given = dict(kv.split("=", 1) for kv in args.shards.split(",")) if args.shards else {}
    paths = [x for x in PATHS if x != "new-cuda" or device.type == "cuda"]
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        cost: dict[tuple[int, str], PathCost] = {}
        for size in (int(s) for s in args.sizes.split(",")):
            shards = given.get(str(size)) or make_shards(Path(tmp) / str(size), args.clips, size)
            for path in paths:
                c = per_clip_cost(path, shards, args.batch_size, small, large, args.repeat, scratch=tmp)
                cost[size, path] = c
                print(f"  {size}² {path:<10} {1000 * c.cpu:7.2f} ms CPU per clip", file=sys.stderr)
    elapsed = time.time() - t0
    sizes = sorted({s for s, _ in cost}, reverse=True)
    cpu = {k: c.cpu for k, c in cost.items()}

    def cpu_row(path: str) -> tuple:
        per_size = [(1000 * cpu[s, path], 1 / cpu[s, path], cpu[s, path] / cpu[s, "today"]) for s in sizes]
        return (path, *[v for values in per_size for v in values])

    def device_row(path: str) -> tuple:
        per_size = [(cost[s, path].device, cost[s, path].wall, cost[s, path].window_cpu) for s in sizes]
        return (path, *[1000 * (v or 0.0) for values in per_size for v in values])

    print_table(
        f"Training input pipeline, vggsound augmentation, batch {args.batch_size}: host CPU of the "
        f"process tree (median margin of {args.repeat} pairs of {small} vs {large} batches; {elapsed:.0f} s)",
        [cpu_row(path) for path in paths],
        ("path", *[h for s in sizes for h in (f"ms CPU/clip {s}²", f"clips/s/core {s}²", f"x today {s}²")]),
    )
    print_table(
        "Batched decode + augmentation per clip, device vs host (each batch after the first a window "
        "drained at both ends; device: CUDA events on CUDA, the wall clock on the CPU; host CPU: the "
        "measuring process in the windows, sleeping, not spinning, while it waits)",
        [device_row(path) for path in paths if path in ("new-cpu", "new-cuda")],
        ("path", *[h for s in sizes for h in (f"device ms {s}²", f"host wall ms {s}²", f"host CPU ms {s}²")]),
    )
    top = max(sizes)
    loader_rate = 1 / cpu[top, "new-loader"]
    ratio = cpu[top, "new-loader"] / cpu[top, "today"]
    print(
        f"\nat {top}²: CPU per clip on the GPU path (loader only) = {ratio:.2f}x today's (goal <= 0.33x); "
        f"cores per GPU at 1000 / 3000 clips/s: {1000 / loader_rate:.1f} / "
        f"{3000 / loader_rate:.1f} (today: {1000 * cpu[top, 'today']:.0f} / {3000 * cpu[top, 'today']:.0f})"
    )
    print(accounting())
    written = write_results(
        "loader",
        argv,
        data={
            "device": str(device),
            "batch_size": args.batch_size,
            "batches": [small, large],
            "repeat": args.repeat,
            "seconds_per_clip": {f"{s}/{path}": asdict(c) for (s, path), c in cost.items()},
        },
        results_dir=args.results,
    )
    print(f"results: {', '.join(written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
