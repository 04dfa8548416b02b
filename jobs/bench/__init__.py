"""`avfusion bench NAME`: benchmarks, each printing a ratio against a floor measured in the same run.

Names: preprocess, train, loader, robustness, label, scale, gpu. Benchmarks run jobs, so they live
with the entry points and call the same library functions the jobs call. They are not
timed tests; tests check behaviour. ``python -m jobs.bench NAME`` works too.
"""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHES = {
    "preprocess": "jobs.bench.preprocess",
    "train": "jobs.bench.train",
    "loader": "jobs.bench.loader",
    "robustness": "jobs.bench.robustness",
    "label": "jobs.bench.label",
    "scale": "jobs.bench.scale",
    "gpu": "jobs.bench.gpu",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="avfusion bench", description=__doc__.split("\n\n")[0].split(": ", 1)[1]
    )
    parser.add_argument("name", choices=sorted(BENCHES), help="which benchmark")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the benchmark's own options (NAME --help)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return int(importlib.import_module(BENCHES[args.name]).main(args.args) or 0)
