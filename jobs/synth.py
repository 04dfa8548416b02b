"""`avfusion synth OUT`: write a class-conditional synthetic clip set.

Classes are carried by audio only, video only, or both (see ``avfusion.synth``); the
folder gets ``labels.csv`` in VGGSound format and ``synth.jsonl`` with each clip's
informative modality, so it feeds ``avfusion preprocess OUT --labels OUT/labels.csv``
exactly like real downloaded clips.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from avfusion.synth import SynthSpec, make_class_conditional_set


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avfusion synth", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("out", type=Path, help="folder to write clips, labels.csv and synth.jsonl into")
    p.add_argument("--per-class", type=int, default=8, help="clips per class (default 8)")
    p.add_argument("--size", type=int, default=64, help="frame width and height in pixels (default 64)")
    p.add_argument("--seconds", type=float, default=2.0, help="clip duration (default 2.0)")
    p.add_argument("--fps", type=float, default=8.0, help="frames per second (default 8)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = SynthSpec(
        width=args.size, height=args.size, duration=args.seconds, fps=args.fps, sample_rate=16_000
    )
    samples = make_class_conditional_set(args.out, args.per_class, spec, seed=args.seed)
    counts = Counter((s.label, s.informative) for s in samples)
    for (label, informative), n in sorted(counts.items()):
        print(f"{label:<20} {informative:<6} {n}")
    print(f"wrote {len(samples)} clips to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
