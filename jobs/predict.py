"""`avfusion predict CLIP --checkpoint CKPT`: label one clip; prints the label,
confidence, top-5 and the attention weights (``--json`` for the whole row)."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="avfusion predict", description=__doc__.split(": ", 1)[1])
    p.add_argument("clip", help="a video, audio or animated GIF file")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print the full row as JSON")
    args = p.parse_args(argv)
    from avfusion.labelling import predict

    try:
        row = predict(args.clip, args.checkpoint, args.top_k)
    except (OSError, KeyError, ValueError) as exc:  # ValueError: not a checkpoint this version reads
        print(f"avfusion predict: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(row, indent=1))
        return 0 if not row["error_class"] else 1
    if row["error_class"]:
        print(f"{args.clip}: {row['error_class']}: {row['error_message']}", file=sys.stderr)
        return 1
    print(f"Predicted class: {row['predicted_label']} ({row['confidence']:.3f})")
    print(f"Fusion attention [audio, video]: [{row['w_audio']:.3f}, {row['w_video']:.3f}]")
    if row["flags"]:  # e.g. audio_only (an audio file), partial (salvaged from a damaged file)
        print(f"Flags: {', '.join(row['flags'])} (covered {row['covered_seconds']:.1f} s)")
    for label, prob in zip(row["topk_labels"], row["topk_probs"], strict=True):
        print(f"  {prob:6.3f}  {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
