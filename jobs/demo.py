"""`avfusion demo`: the whole pipeline on the bundled real sample set.

preprocess (Ray tasks) → train fused, audio-only and video-only models with the
``small`` recipe → robustness evaluation → label the sample folder into Parquet, then
print how the fused model compares with each unimodal model and where its attention
goes under muted audio, black frames, blur and noise, held-out Parquet rows with
their true labels and the accuracy over all held-out rows, and where the plots are.
One split (test = fold 0 of the set's 5 folds, which share no recording or picture);
`avfusion bench robustness` runs the k-fold version. Runs on an embedded local Ray
unless ``--address`` names a cluster. CPU-sized: 64² frames (``--epochs 1`` for a
smoke run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from avfusion import sample_data
from avfusion.config import ExecutorSpec
from avfusion.executor.ray_tasks import ray_session
from jobs import JobParser, ray_address, refusing


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(
        prog="avfusion demo",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    p.add_argument("--config", default="small", help="training recipe: preset name or YAML (default small)")
    p.add_argument("--epochs", type=int, help="training epochs per model (default: the recipe's)")
    p.add_argument(
        "--conditions",
        help="evaluate only these conditions (comma-separated, e.g. "
        "normal,muted_audio,black_frames); default: the whole default suite",
    )
    p.add_argument("--address", help="Ray cluster address; default: embedded local Ray")
    p.add_argument("--num-cpus", type=int, help="CPUs for the embedded Ray (default: all)")
    return p


def _step(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


@refusing("avfusion demo")  # a bad flag value: one line, exit 2
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from jobs import evaluate, label, preprocess, train

    ExecutorSpec(num_cpus=args.num_cpus)  # bounds, before any work starts
    if args.epochs is not None:  # train's own bound, checked before preprocess runs
        from avfusion.train import TrainConfig

        TrainConfig(shards="", out="", epochs=args.epochs)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    shards, runs = out / "shards", out / "runs"
    epochs = ["--epochs", str(args.epochs)] if args.epochs is not None else []
    with ray_session(ray_address(args.address), args.num_cpus):
        _step("1/4 preprocess the sample set into WebDataset shards (Ray tasks)")
        rc = preprocess.main(
            [
                str(sample_data.clips_dir()),
                "--labels",
                str(sample_data.labels_csv()),
                "--out",
                str(shards),
                "--shard-size",
                "25",
                "--config",
                args.config,
            ]
        )
        if rc:
            return rc
        for modality in ("both", "audio", "video"):
            name = "fused" if modality == "both" else modality + "-only"
            _step(f"2/4 train the {name} model (recipe {args.config})")
            rc = train.main(
                [
                    str(shards),
                    "--out",
                    str(runs / modality),
                    "--config",
                    args.config,
                    "--modalities",
                    modality,
                    *epochs,
                ]
            )
            if rc:
                return rc
        _step("3/4 robustness: accuracy and attention under corruptions")
        rc = evaluate.main(
            [
                str(runs / "both" / "last.pt"),
                "--shards",
                str(shards),
                "--out",
                str(out / "robustness"),
                "--audio-baseline",
                str(runs / "audio" / "last.pt"),
                "--video-baseline",
                str(runs / "video" / "last.pt"),
                "--workers",
                "1",
                *(["--conditions", args.conditions] if args.conditions else []),
            ]
        )
        if rc:
            return rc
        _step("4/4 label the sample folder into Parquet (Ray Data)")
        rc = label.main(
            [
                str(sample_data.clips_dir()),
                str(out / "labels"),
                "--checkpoint",
                str(runs / "both" / "last.pt"),
            ]
        )
        if rc:
            return rc
    _report(out)
    return 0


SHOWN = (
    ("normal", "clean input"),
    ("muted_audio", "muted audio"),
    ("audio_gaussian_noise@3", "audio noise@3"),
    ("black_frames", "black frames"),
    ("gaussian_blur@3", "blur@3"),
    ("video_gaussian_noise@3", "video noise@3"),
)


def comparison(results: dict) -> str:
    """The demo's table: top-1 of each model, the fused model's margin over the better
    unimodal model and its attention, per condition."""
    lines = [
        "| condition | top-1 fused | top-1 audio-only | top-1 video-only | fused − best unimodal "
        "| w_audio | w_video | agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [(name, results[c]) for c, name in SHOWN if c in results]
    corrupted = [r for c, r in results.items() if c != "normal"]
    mean = {m: {"top1": sum(r[m]["top1"] for r in corrupted) / len(corrupted)} for m in results["normal"]}
    rows.append((f"mean of {len(corrupted)} corruptions", mean))
    for name, r in rows:
        f = r["fused"]
        margin = f["top1"] - max(r["audio-only"]["top1"], r["video-only"]["top1"])
        lines.append(
            f"| {name} | {f['top1']:.3f} | {r['audio-only']['top1']:.3f} | {r['video-only']['top1']:.3f} | "
            f"{margin:+.3f} | "
            + " | ".join(f"{f[k]:.3f}" if k in f else "" for k in ("w_audio", "w_video", "agreement"))
            + " |"
        )
    normal = results["normal"]
    if "audio_head_top1" in normal["fused"]:  # each branch alone inside the fused model
        lines.append(
            f"\nInside the fused model, each branch's own head on clean input: audio "
            f"{normal['fused']['audio_head_top1']:.3f}, video {normal['fused']['video_head_top1']:.3f} "
            f"(the models trained alone: {normal['audio-only']['top1']:.3f}, "
            f"{normal['video-only']['top1']:.3f})."
        )
    return "\n".join(lines)


def held_out_rows(rows: list[dict], labels_csv: Path) -> list[dict]:
    """The label rows of test-split clips, each with its true label (``true_label``)."""
    from avfusion.sources import read_vggsound_csv

    truth = {r.key: r for r in read_vggsound_csv(labels_csv) if r.split == "test"}
    return [
        {**row, "true_label": truth[Path(row["key"]).stem].label}
        for row in rows
        if Path(row["key"]).stem in truth
    ]


def _report(out: Path) -> None:
    from avfusion.labelling.run import read_parts

    _step("summary")
    report = json.loads((out / "robustness" / "robustness.json").read_text())
    results = report["conditions"]
    n, classes = results["normal"]["fused"]["n"], len(report["meta"]["label_map"])
    print(
        f"Test split: {n} clips in {classes} classes (chance {1 / classes:.3f}), never sharing a "
        f"recording or a picture with training.\n"
    )
    print(comparison(results))
    print(
        "\nThe full table (every corruption) is robustness/robustness.md. One split is noisy: for the "
        "k-fold table run\n  avfusion bench robustness --skip-synthetic"
    )
    table = read_parts(
        str(out / "labels"), ["key", "predicted_label", "confidence", "w_audio", "w_video", "error_class"]
    )
    if table is None:
        raise SystemExit(f"demo: label wrote no part file under {out / 'labels'}")
    rows = held_out_rows(table.to_pylist(), sample_data.labels_csv())
    right = sum(r["predicted_label"] == r["true_label"] for r in rows)
    print(
        f"\nlabels/*.parquet labels the whole sample folder; its {len(rows)} held-out clips (the test split, "
        f"never trained on); eight across the classes:"
    )
    for row in rows[:: max(1, len(rows) // 8)][:8]:  # spread over the classes (rows are in key order)
        mark = "ok " if row["predicted_label"] == row["true_label"] else "-- "
        print(
            f"  {mark}{row['key']:<24} true {row['true_label']:<26} predicted "
            f"{row['predicted_label'] or row['error_class']:<26} conf {row['confidence'] or 0:.2f}  "
            f"[audio {row['w_audio'] or 0:.2f}, video {row['w_video'] or 0:.2f}]"
        )
    print(
        f"Held-out accuracy of the Parquet labels: {right}/{len(rows)} = {right / max(len(rows), 1):.3f} "
        f"(chance {1 / classes:.3f})"
    )
    print("\nPlots:")
    for png in sorted(out.rglob("*.png")):
        print(f"  {png}")
    print(f"\nEverything is under {out}")


if __name__ == "__main__":
    sys.exit(main())
