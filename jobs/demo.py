"""`avfusion demo`: the whole pipeline on the bundled real sample set.

preprocess (Ray tasks) → train fused, audio-only and video-only models → robustness
evaluation → label the sample folder into Parquet, then print the robustness table,
the accuracies, the first Parquet rows and where the plots are. Runs on an embedded
local Ray unless ``--address`` names a cluster. CPU-sized: 64² frames, a few minutes
on 2 cores (``--epochs 1`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from avfusion import sample_data
from jobs._ray import ray_session


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avfusion demo", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    p.add_argument("--epochs", type=int, default=12, help="training epochs per model (default 12)")
    p.add_argument("--frame-size", type=int, default=64)
    p.add_argument("--address", help="Ray cluster address; default: embedded local Ray")
    p.add_argument("--num-cpus", type=int, help="CPUs for the embedded Ray (default: all)")
    return p


def _step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from jobs import evaluate, label, preprocess, train

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    shards, runs = out / "shards", out / "runs"
    (out / "train.yaml").write_text("train:\n  embed_dim: 64\n  audio_width: 16\n  lr: 0.003\n  batch_size: 8\n"
                                    "  workers: 1\n")
    with ray_session(args.address, args.num_cpus):
        _step("1/4 preprocess the sample set into WebDataset shards (Ray tasks)")
        rc = preprocess.main([str(sample_data.clips_dir()), "--labels", str(sample_data.labels_csv()),
                              "--out", str(shards), "--shard-size", "6", "--frame-size", str(args.frame_size)])
        if rc:
            return rc
        for modality in ("both", "audio", "video"):
            _step(f"2/4 train the {'fused' if modality == 'both' else modality + '-only'} model")
            rc = train.main([str(shards), "--out", str(runs / modality), "--config", str(out / "train.yaml"),
                             "--modalities", modality, "--epochs", str(args.epochs)])
            if rc:
                return rc
        _step("3/4 robustness: accuracy and attention under corruptions")
        rc = evaluate.main([str(runs / "both" / "last.pt"), "--shards", str(shards), "--out",
                            str(out / "robustness"), "--audio-baseline", str(runs / "audio" / "last.pt"),
                            "--video-baseline", str(runs / "video" / "last.pt"), "--workers", "1"])
        if rc:
            return rc
        _step("4/4 label the sample folder into Parquet (Ray Data)")
        rc = label.main([str(sample_data.clips_dir()), str(out / "labels"), "--checkpoint",
                         str(runs / "both" / "last.pt")])
        if rc:
            return rc
    _report(out, runs)
    return 0


def _report(out: Path, runs: Path) -> None:
    import pyarrow.parquet as pq

    _step("summary")
    print("Test accuracy after training (9 test clips, chance 0.111):")
    for modality, name in (("both", "fused"), ("audio", "audio-only"), ("video", "video-only")):
        last = json.loads((runs / modality / "metrics.jsonl").read_text().splitlines()[-1])
        print(f"  {name:<11} top-1 {last.get('val_top1', float('nan')):.3f}  top-5 {last.get('val_top5', float('nan')):.3f}"
              f"  mean attention [audio {last.get('w_audio', float('nan')):.3f}, video {last.get('w_video', float('nan')):.3f}]")
    print("\nRobustness (robustness/robustness.md):")
    print((out / "robustness" / "robustness.md").read_text().split("\n\n", 2)[-1])
    table = pq.read_table(sorted((out / "labels").glob("part-*.parquet")),
                          columns=["key", "predicted_label", "confidence", "w_audio", "w_video", "error_class"])
    print("First rows of labels/*.parquet:")
    for row in table.slice(0, 5).to_pylist():
        print(f"  {row['key']:<22} {row['predicted_label'] or row['error_class']:<28} "
              f"conf {row['confidence'] or 0:.2f}  [audio {row['w_audio'] or 0:.2f}, video {row['w_video'] or 0:.2f}]")
    print("\nPlots:")
    for png in sorted(out.rglob("*.png")):
        print(f"  {png}")
    print(f"\nEverything is under {out}")
