"""`avfusion predict CLIP --checkpoint CKPT`: label one clip; prints the label,
confidence, top-5 and the attention weights (``--json`` for the whole row)."""

from __future__ import annotations

import json
import sys

from jobs import JobParser, refusing


# KeyError, ValueError: not a checkpoint this version reads
@refusing("avfusion predict", KeyError, ValueError)
def main(argv: list[str] | None = None) -> int:
    p = JobParser(prog="avfusion predict", description=__doc__.split(": ", 1)[1])
    p.add_argument("clip", help="a video, audio or animated GIF file")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--top-k", type=int, default=5, help="labels in the top-k list")
    p.add_argument("--json", action="store_true", help="print the full row as JSON")
    p.add_argument("--verbose", action="store_true", help="a refused input's traceback")
    args = p.parse_args(argv)
    from avfusion.labelling import predict
    from avfusion.labelling.run import LabelConfig

    LabelConfig(input=args.clip, out="", checkpoint=args.checkpoint, top_k=args.top_k)  # label's bounds
    row = predict(args.clip, args.checkpoint, args.top_k)
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
