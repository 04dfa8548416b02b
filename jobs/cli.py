"""The ``avfusion`` console script: ``avfusion <job> [args]`` runs ``jobs.<job>.main``.

Job modules are imported only when run, so ``avfusion --help`` is instant and never
pays for torch or Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from avfusion import __version__
from jobs import JobParser

JOBS: dict[str, str] = {
    "preprocess": "clip list or folder → Ray tasks → yt-dlp/PyAV → WebDataset shards",
    "train": "train the modality-attention fusion model from shards (CPU, torchrun, Ray Train)",
    "evaluate": "robustness: accuracy and attention under corruptions, report and plots",
    "label": "batch-label a folder of videos into Parquet (Ray Data, or in-process with --executor local)",
    "predict": "label one clip and print prediction, top-5 and attention",
    "bench": "benchmarks, each as a ratio against a floor measured in the same run",
    "demo": "run the pipeline end to end on the bundled real sample set (embedded Ray)",
    "synth": "write a synthetic class-conditional clip set (smoke-test a cluster with no data)",
    "doctor": "check ffmpeg, JS solver, cookies, proxy, storage, Ray nodes, GPUs, weights "
    "(OK/WARN/FAIL + fix)",
}


def build_parser() -> argparse.ArgumentParser:
    width = max(map(len, JOBS))
    listing = "\n".join(f"  {name:<{width}}  {text}" for name, text in JOBS.items())
    parser = JobParser(
        prog="avfusion",
        description="Audio-visual event recognition over large video collections.",
        epilog=f"jobs:\n{listing}\n\n`avfusion <job> --help` for a job's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"avfusion {__version__}")
    parser.add_argument("job", choices=sorted(JOBS), metavar="job", help="one of: " + ", ".join(JOBS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    module = importlib.import_module(f"jobs.{args.job}")
    return int(module.main(args.args) or 0)


if __name__ == "__main__":
    sys.exit(main())
