"""`avfusion evaluate CHECKPOINT --shards DIR`: robustness of a trained model.

Accuracy (top-1/top-5) and mean attention [w_audio, w_video] under normal input,
missing modalities, and the corruption suite (``--suite default``: severity 3;
``--suite full``: severities 1–5), beside the audio-only and video-only baselines
when their checkpoints are given. Writes robustness.json, robustness.md and PNGs.
"""

from __future__ import annotations

import argparse
import sys

from jobs import JobParser, refuse, refusing


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(
        prog="avfusion evaluate",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("checkpoint", help="fused model checkpoint (last.pt from avfusion train)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--shards", help="shard folder; evaluates --split")
    src.add_argument("--folder", help="folder of videos, labelled by --labels (VGGSound CSV)")
    p.add_argument("--labels", help="with --folder: VGGSound-format labels")
    p.add_argument("--split", default="test")
    p.add_argument("--audio-baseline", help="audio-only checkpoint to compare with")
    p.add_argument("--video-baseline", help="video-only checkpoint to compare with")
    p.add_argument("--suite", default="default", choices=["default", "full"])
    p.add_argument(
        "--conditions", help="comma-separated instead of a suite, e.g. normal,muted_audio,gaussian_blur@5"
    )
    p.add_argument("--out", default="robustness", help="report folder")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N: where the models run"
    )
    p.add_argument("--verbose", action="store_true", help="show a refused input's traceback")
    return p


@refusing("avfusion evaluate")  # a bad flag value: one line, exit 2
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.folder and not args.labels:
        print("avfusion evaluate: --folder needs --labels", file=sys.stderr)
        return 2
    from avfusion.evaluation.conditions import NORMAL, parse_conditions
    from avfusion.evaluation.run import EvalConfig, run

    try:
        conds = parse_conditions(args.conditions) if args.conditions else None
        cfg = EvalConfig(
            checkpoint=args.checkpoint,
            shards=args.shards,
            folder=args.folder,
            labels=args.labels,
            split=args.split,
            audio_baseline=args.audio_baseline,
            video_baseline=args.video_baseline,
            suite=args.suite,
            conditions=conds,
            out=args.out,
            batch_size=args.batch_size,
            seed=args.seed,
            workers=args.workers,
            device=args.device,
        )
        results = run(cfg)
    except (OSError, ValueError, KeyError) as exc:
        return refuse("avfusion evaluate", exc, args.verbose)
    return 0 if results[NORMAL]["fused"]["n"] else 1


if __name__ == "__main__":
    sys.exit(main())
