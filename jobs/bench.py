"""`avfusion bench NAME`: benchmarks, each printing a ratio against a floor measured in the same run.

Names: preprocess, train, loader, robustness, label, scale.
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHES = {
    "preprocess": "avfusion.bench.preprocess",
    "train": "avfusion.bench.train",
    "loader": "avfusion.bench.loader",
    "robustness": "avfusion.bench.robustness",
    "label": "avfusion.bench.label",
    "scale": "avfusion.bench.scale",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avfusion bench", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("name", choices=sorted(BENCHES), help="which benchmark")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options (NAME --help)")
    args = parser.parse_args(argv)
    return int(importlib.import_module(BENCHES[args.name]).main(args.args) or 0)


if __name__ == "__main__":
    sys.exit(main())
