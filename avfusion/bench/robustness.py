"""``avfusion bench robustness``: does attention move to the modality that still works?

On the class-conditional synthetic set (classes carried by audio only, video only or
both) and on the bundled real sample set, train four models with identical settings:
fused (modality dropout on), fused with modality dropout off (ablation), audio-only
and video-only. Then evaluate on the test split under clean input, muted audio,
blurred video (severity 3 and 5) and black frames, and report:

* Δw_audio when audio is muted (target ≤ −0.4), Δw_video when video is blurred at
  severity 5 (target ≤ −0.3);
* fused accuracy under each single-modality corruption as a fraction of the unimodal
  model on the intact modality (target ≥ 0.9);
* fused vs both unimodal models on clean input (target: fused ≥ both).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from avfusion.bench.common import build_shards, print_table

CONDITIONS = ("normal", "muted_audio", "gaussian_blur@3", "gaussian_blur@5", "black_frames")


def train_models(shards: str, out: Path, epochs: int, seed: int, batch: int) -> dict[str, Path]:
    from avfusion.corruptions import AugmentConfig
    from avfusion.distributed import DistEnv
    from avfusion.train import TrainConfig, train

    dist = DistEnv(0, 1, 0, torch.device("cpu"))
    base = TrainConfig(shards=shards, out="", epochs=epochs, batch_size=batch, embed_dim=64, audio_width=16,
                       lr=3e-3, workers=1, seed=seed)
    variants = {
        "fused": base,
        "fused, no modality dropout": replace(base, augment=AugmentConfig(enabled=False)),
        "audio-only": replace(base, modalities="audio"),
        "video-only": replace(base, modalities="video"),
    }
    paths = {}
    for name, cfg in variants.items():
        run = out / name.replace(" ", "_").replace(",", "")
        print(f"training {name} ...", flush=True)
        train(replace(cfg, out=str(run)), dist)
        paths[name] = run / "last.pt"
    return paths


def evaluate_models(paths: dict[str, Path], shards: str, seed: int) -> dict:
    from avfusion.robustness import Condition, evaluate
    from avfusion.train import model_from_checkpoint
    from shards.loader import Dataset, loader, pipeline

    models = {name: model_from_checkpoint(p)[0] for name, p in paths.items()}
    data = Dataset.open(shards)
    batches = list(loader(pipeline(data.urls, 16, split="test", train=False, collation_fn=lambda xs: xs), 0))
    return evaluate(models, batches, [Condition.parse(c) for c in CONDITIONS], seed=seed)


def summarise(title: str, results: dict) -> dict:
    def acc(cond, model):
        return results[cond][model]["top1"]

    def w(cond, model, key="w_audio"):
        return results[cond][model][key]

    rows, summary = [], {}
    for fused in ("fused", "fused, no modality dropout"):
        d_audio_muted = w("muted_audio", fused) - w("normal", fused)
        d_video_blur3 = w("gaussian_blur@3", fused, "w_video") - w("normal", fused, "w_video")
        d_video_blur5 = w("gaussian_blur@5", fused, "w_video") - w("normal", fused, "w_video")
        d_video_black = w("black_frames", fused, "w_video") - w("normal", fused, "w_video")
        muted_ratio = acc("muted_audio", fused) / max(acc("normal", "video-only"), 1e-9)
        blur_ratio = acc("gaussian_blur@5", fused) / max(acc("normal", "audio-only"), 1e-9)
        black_ratio = acc("black_frames", fused) / max(acc("normal", "audio-only"), 1e-9)
        summary[fused] = dict(d_w_audio_muted=d_audio_muted, d_w_video_blur3=d_video_blur3,
                              d_w_video_blur5=d_video_blur5, d_w_video_black=d_video_black,
                              muted_vs_video_only=muted_ratio, blur5_vs_audio_only=blur_ratio,
                              black_vs_audio_only=black_ratio, clean_top1=acc("normal", fused))
        rows.append((fused, w("normal", fused), d_audio_muted, d_video_blur3, d_video_blur5, d_video_black,
                     muted_ratio, blur_ratio, black_ratio))
    print_table(f"{title}: attention shifts and accuracy ratios", rows,
                ("model", "w_audio clean", "dw_a muted", "dw_v blur@3", "dw_v blur@5", "dw_v black",
                 "muted/video-only", "blur@5/audio-only", "black/audio-only"))
    acc_rows = [(m, *[acc(c, m) for c in CONDITIONS]) for m in results["normal"]]
    print_table(f"{title}: top-1 per condition", acc_rows, ("model", *CONDITIONS))
    summary["clean"] = {m: acc("normal", m) for m in results["normal"]}
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="avfusion bench robustness", description=__doc__.split("\n\n")[0])
    p.add_argument("--per-class", type=int, default=24, help="synthetic clips per class (6 classes)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--sample-epochs", type=int, default=15, help="epochs on the bundled real sample set")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-sample-set", action="store_true")
    p.add_argument("--out", type=Path, help="keep runs and results here (default: a temp dir)")
    args = p.parse_args(argv)
    from avfusion import sample_data
    from avfusion.config import ClipSpec
    from avfusion.synth import SynthSpec, make_class_conditional_set

    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        report = {}
        make_class_conditional_set(root / "synth", args.per_class, SynthSpec(width=64, height=64, duration=2.0, fps=8,
                                                                             sample_rate=16_000), seed=args.seed)
        shards = build_shards(root / "synth", root / "synth" / "labels.csv", root / "synth_shards",
                              ClipSpec(clip_seconds=2.0, frame_size=64))
        paths = train_models(shards, root / "synth_runs", args.epochs, args.seed, args.batch_size)
        report["synthetic"] = summarise("Synthetic class-conditional set", evaluate_models(paths, shards, args.seed))
        if not args.skip_sample_set:
            shards = build_shards(sample_data.clips_dir(), sample_data.labels_csv(), root / "sample_shards",
                                  ClipSpec(frame_size=64), shard_size=12)
            paths = train_models(shards, root / "sample_runs", args.sample_epochs, args.seed, 8)
            report["sample_set"] = summarise("Bundled real sample set", evaluate_models(paths, shards, args.seed))
        (root / "bench_robustness.json").write_text(json.dumps(report, indent=1))
        print(f"\nresults: {root / 'bench_robustness.json'}")
        print("targets: dw_a muted <= -0.4, dw_v blur@5 <= -0.3, ratios >= 0.9, fused clean >= both unimodal")
    return 0
