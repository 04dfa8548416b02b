"""``avfusion bench train``: the training step's throughput and what the input costs.

1. samples/s of the full training step (forward, backward, AdamW) fed from shards
   through the loader, vs the same step fed from tensors already in memory: the ratio
   is the share of model speed the input pipeline keeps.
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
from itertools import islice
from pathlib import Path

import soundfile as sf
import torch

from jobs.bench.common import build_shards, print_table
from shards.reader import rgb_from_jpeg


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


def step_rate(model, opt, batches, device, bf16: bool, steps: int, warmup: int = 2) -> float:
    from avfusion.model import LossConfig, fusion_loss

    it = iter(batches)
    seen, t0 = 0, None
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, seen = time.perf_counter(), 0
        b = next(it).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
            loss, _ = fusion_loss(model(b.waveform, b.frames), b.target, LossConfig(reliability_weight=1.0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(b.keys)
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert t0 is not None  # set at the first timed step (steps >= 1)
    return seen / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="avfusion bench train", description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", help="existing shard folder (default: build synthetic ones)")
    p.add_argument("--clips", type=int, default=96)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--frame-size", type=int, default=112)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--no-bf16", action="store_true")
    args = p.parse_args(argv)
    from avfusion.loader import Batch, Dataset, TrainStream, data_loader
    from avfusion.model import FusionModel, ModelConfig

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = args.shards or make_shards(Path(tmp), args.clips, args.frame_size, args.seconds)
        data = Dataset.open(root)
        bare, n = bare_decode_rate(data.urls)
        ours, _ = reader_rate(data.urls, args.batch_size, 0)
        ours_workers, _ = reader_rate(data.urls, args.batch_size, args.workers)

        model = FusionModel(ModelConfig(num_classes=len(data.label_map))).to(device)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        net = torch.compile(model) if args.compile else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        first = next(
            iter(data_loader(TrainStream(data.urls, args.batch_size, split=None, batches_per_epoch=1), 0))
        )
        first = first.to("cpu")
        in_memory = Batch(
            first.waveform.to(device), first.frames.to(device), first.target.to(device), first.keys
        )

        def repeat():
            while True:
                yield in_memory

        total = args.steps + 2
        per_worker = -(-total // max(1, args.workers))
        from_shards = data_loader(
            TrainStream(
                data.urls, args.batch_size, split=None, batches_per_epoch=per_worker, compact_frames=False
            ),
            args.workers,
            device=device,
        )
        model_only = step_rate(net, opt, repeat(), device, not args.no_bf16, args.steps)
        full = step_rate(net, opt, islice(from_shards, total), device, not args.no_bf16, args.steps)

    s = args.frame_size
    print_table(
        f"Input pipeline ({n} samples, {s}x{s} frames, {args.seconds:g} s audio)",
        [
            ("bare JPEG+FLAC decode (bytes in memory)", bare, 1.0),
            ("shard reader, 0 workers", ours, ours / bare),
            (f"shard reader, {args.workers} workers", ours_workers, ours_workers / bare),
        ],
        ("reader", "samples/s", "x bare"),
    )
    print_table(
        f"Training step on {device} (batch {args.batch_size}, compile={args.compile}, "
        f"bf16={device.type == 'cuda' and not args.no_bf16})",
        [
            ("model only (tensors in memory)", model_only, 1.0),
            (f"fed from shards ({args.workers} workers)", full, full / model_only),
        ],
        ("step", "samples/s", "x model-only"),
    )
    print(
        f"\nshard reader / bare decode = {ours / bare:.2f}x (target >= 0.8x); "
        f"training from shards / model-only = {full / model_only:.2f}x"
    )
    return 0
