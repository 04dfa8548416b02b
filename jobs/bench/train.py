"""``avfusion bench train``: the training step's throughput and what the input costs.

1. samples/s of the training loop's own step (``avfusion.train``: forward, loss,
   backward, clip, AdamW, schedule; the recipe's model, loss, augmentation and mixup)
   fed by the training path itself — the persistent DataLoader of compact batches
   (``stream``), each batch decoded and augmented on the device (``prepare``) — vs the
   same step on one batch prepared once and kept on the device: the ratio is the share
   of model speed the input pipeline keeps. Both sides: the same run, batch size and
   number of timed steps after the same warm-up, timed by ``common.DeviceTimer``
   (CUDA events on a GPU, the device drained at both ends of the window).
2. the shard reader alone (tar → decode → batch) vs bare JPEG + FLAC decoding of the
   same samples' bytes already in memory (the floor for any reader of this format).
Shards are built on the spot from synthetic clips (no Ray needed).
"""

from __future__ import annotations

import argparse
import io
import tarfile
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import soundfile as sf
import torch

from avfusion.config import ConfigError
from jobs import refusing
from jobs.bench.common import RESULTS_DIR, DeviceTimer, bench_device, build_shards, print_table, write_results
from shards.reader import rgb_from_jpeg

if TYPE_CHECKING:
    from avfusion.loader import Batch
    from avfusion.train import Run, TrainConfig


def make_shards(folder: Path, clips: int, frame_size: int, seconds: float) -> str:
    from avfusion.config import ClipSpec
    from avfusion.synth import SynthSpec, make_class_conditional_set

    make_class_conditional_set(
        folder / "clips",
        max(1, clips // 6),
        SynthSpec(width=320, height=240, duration=seconds, fps=25, sample_rate=16_000),
    )
    return build_shards(
        folder / "clips",
        folder / "clips" / "labels.csv",
        folder / "shards",
        ClipSpec(clip_seconds=seconds, frame_size=frame_size),
        all_train=True,
    )


def bare_decode_rate(urls: list[str]) -> tuple[float, int]:
    """Samples/s decoding every sample's JPEGs and FLAC from bytes in memory."""
    members = []
    for url in urls:
        with tarfile.open(url) as tar:
            for m in tar.getmembers():
                member = tar.extractfile(m)
                assert member is not None  # a shard holds regular files only
                members.append((m.name, member.read()))
    n = sum(name.endswith(".flac") for name, _ in members)
    t0 = time.perf_counter()
    for name, data in members:
        if name.endswith(".jpg"):
            rgb_from_jpeg(data)
        elif name.endswith(".flac"):
            sf.read(io.BytesIO(data), dtype="float32")
    return n / (time.perf_counter() - t0), n


def reader_rate(urls: list[str], batch: int, workers: int) -> tuple[float, int]:
    from avfusion.loader import data_loader, eval_stages

    t0, n = time.perf_counter(), 0
    for b in data_loader(eval_stages(urls, batch, split=None, compact_frames=False), workers):
        n += len(b.keys)
    return n / (time.perf_counter() - t0), n


@dataclass(frozen=True, kw_only=True)
class StepRate:
    """One side of the training comparison: ``samples`` trained in its timed window."""

    samples: int
    timer: DeviceTimer

    @property
    def per_second(self) -> float:
        return self.samples / max(self.timer.device_seconds, 1e-12)


def recipe_config(
    recipe: str,
    shards: str,
    out: str,
    *,
    batch_size: int,
    steps: int,
    workers: str | None = None,
    compiled: bool = False,
    bf16: bool = True,
) -> TrainConfig:
    """The recipe's ``train:`` section with the bench's batch, length and flags (one
    epoch of ``steps``; ``workers``: a count, ``auto``, or None for the recipe's). The
    ResNet starts from random weights: weights do not change the speed."""
    from avfusion.config import from_dict, load_yaml
    from avfusion.train import TrainConfig

    data = dict(load_yaml(recipe).get("train") or {})
    data.update(shards=shards, out=out, epochs=1, batch_size=batch_size, steps_per_epoch=steps)
    data.update(compile=compiled, bf16=bf16, val_split="none")
    if workers is not None:
        data["workers"] = workers if workers == "auto" else _count(workers)
    cfg = from_dict(TrainConfig, data, prefix="train")
    return replace(cfg, model=replace(cfg.model, video_weights="none"))


def _count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--workers: {text!r} is neither a count nor 'auto'") from None


def training_run(cfg: TrainConfig, device: torch.device) -> Run:
    """The training job's own set-up: ``build`` (seeds, CPU threads, model, optimizer,
    schedule), ``stream`` (the persistent DataLoader of compact batches and the
    ``BatchAugment``), ``wrap``."""
    from avfusion.distributed import DistEnv
    from avfusion.train import build, stream, wrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights": this run measures speed, not learning
        r = build(cfg, DistEnv(0, 1, 0, device))
    stream(r)
    r.net = wrap(r.model, r.cfg, r.dist)
    return r


def _steps(r: Run, batches: Iterator[tuple[Batch, torch.Tensor]], warmup: int, steps: int) -> StepRate:
    """``warmup`` untimed steps, then ``steps`` timed ones (the device drained at both
    ends of the window); each step is the loop's own: ``train_step`` and ``accumulate``."""
    from avfusion.train import accumulate, train_step

    sums: dict[str, torch.Tensor] = {}
    for _ in range(warmup):
        batch, target = next(batches)
        accumulate(sums, *train_step(r, batch, target), len(batch.keys))
    timer, seen = DeviceTimer(r.dist.device), 0
    with timer:
        for _ in range(steps):
            batch, target = next(batches)
            seen += accumulate(sums, *train_step(r, batch, target), len(batch.keys))
    return StepRate(samples=seen, timer=timer)


def model_only(r: Run, warmup: int, steps: int) -> StepRate:
    """The training step alone: one batch of the same stream, prepared once (decoded and
    augmented on the device), stepped on again and again."""
    from avfusion.loader import TrainStream
    from avfusion.train import prepare

    first = next(
        iter(
            TrainStream(
                r.data.urls, r.cfg.batch_size, split=r.train_subset, batches_per_epoch=1, seed=r.cfg.seed
            )
        )
    )
    ready = prepare(first, r, r.epoch)

    def repeat() -> Iterator[tuple[Batch, torch.Tensor]]:
        while True:
            yield ready

    return _steps(r, repeat(), warmup, steps)


def from_shards(r: Run, warmup: int, steps: int) -> StepRate:
    """The training loop's input path: the persistent DataLoader's compact batches,
    each through ``prepare`` (JPEG decode, augmentation and mixup on the device), then
    the step. Needs ``cfg.steps_per_epoch >= warmup + steps`` (one epoch of the loader)."""
    from avfusion.train import prepare

    assert r.steps >= warmup + steps, (r.steps, warmup, steps)
    loader = iter(r.batches)
    prepared = (prepare(batch, r, r.epoch) for batch in loader)
    return _steps(r, prepared, warmup, steps)


@refusing("avfusion bench train")  # a bad recipe or device: one line, exit 2
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="avfusion bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", help="existing shard folder (default: build synthetic ones)")
    p.add_argument("--clips", type=int, default=96)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--frame-size", type=int, default=112)
    p.add_argument("--config", default="vggsound", help="the recipe whose training step is measured")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each side's window")
    p.add_argument("--steps", type=int, default=8, help="timed steps per side")
    p.add_argument(
        "--workers", help="loader workers, a count or 'auto' (default: the recipe's, as training runs)"
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--results", default=RESULTS_DIR, help="folder of the results files")
    args = p.parse_args(argv)
    from avfusion.loader import Dataset, loader_workers

    if args.warmup < 0 or args.steps < 1:
        raise ConfigError(f"--warmup must be >= 0 and --steps >= 1, got {args.warmup} and {args.steps}")
    device = bench_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.shards or make_shards(Path(tmp), args.clips, args.frame_size, args.seconds)
        cfg = recipe_config(
            args.config,
            root,
            str(Path(tmp) / "run"),
            batch_size=args.batch_size,
            steps=args.warmup + args.steps,
            workers=args.workers,
            compiled=args.compile,
            bf16=not args.no_bf16,
        )
        workers = loader_workers(cfg.workers, device)
        data = Dataset.open(root)
        bare, n = bare_decode_rate(data.urls)
        ours, _ = reader_rate(data.urls, args.batch_size, 0)
        ours_workers = reader_rate(data.urls, args.batch_size, workers)[0] if workers else ours
        r = training_run(cfg, device)
        alone = model_only(r, args.warmup, args.steps)
        fed = from_shards(r, args.warmup, args.steps)
        r.batches = None  # the loader's workers end here, before their shards are deleted

    s = data.manifest["config"]["clip"]["frame_size"]
    print_table(
        f"Input pipeline ({n} samples, {s}x{s} frames)",
        [
            ("bare JPEG+FLAC decode (bytes in memory)", bare, 1.0),
            ("shard reader, 0 workers", ours, ours / bare),
            *([(f"shard reader, {workers} workers", ours_workers, ours_workers / bare)] if workers else []),
        ],
        ("reader", "samples/s", "x bare"),
    )
    bf16 = device.type == "cuda" and r.cfg.bf16
    print_table(
        f"Training step on {device}, recipe {args.config} (batch {args.batch_size}, {args.steps} timed steps "
        f"after {args.warmup}, compile={args.compile}, bf16={bf16}; device time by {alone.timer.method})",
        [
            (
                name,
                side.per_second,
                side.per_second / alone.per_second,
                side.timer.device_seconds,
                side.timer.wall_seconds,
                side.timer.cpu_seconds,
            )
            for name, side in (
                ("model only (one prepared batch on the device)", alone),
                (f"from shards: loader ({r.cfg.workers} workers) + prepare + step", fed),
            )
        ],
        ("step", "samples/s", "x model-only", "device s", "host wall s", "host CPU s"),
    )
    print(
        f"\nshard reader / bare decode = {ours / bare:.2f}x (target >= 0.8x); "
        f"training from shards / model-only = {fed.per_second / alone.per_second:.2f}x"
    )
    written = write_results(
        "train",
        argv,
        data={
            "device": str(device),
            "recipe": args.config,
            "frame_size": s,
            "batch_size": args.batch_size,
            "warmup": args.warmup,
            "steps": args.steps,
            "workers": r.cfg.workers,
            "reader": {"bare": bare, "workers0": ours, "workers": ours_workers},
            "model_only": {"samples": alone.samples, **alone.timer.as_dict()},
            "from_shards": {"samples": fed.samples, **fed.timer.as_dict()},
            "ratio": fed.per_second / alone.per_second,
        },
        results_dir=args.results,
    )
    print(f"results: {', '.join(written)}")
    return 0
