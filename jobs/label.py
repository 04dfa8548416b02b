"""`avfusion label INPUT OUT --checkpoint CKPT`: label videos into a Parquet dataset.

INPUT is a folder (recursive), a text file listing paths, or an fsspec URL of a
folder. On Ray Data: file list → decode in CPU tasks → model in an actor pool that
loads the checkpoint once (a GPU each when --gpus-per-actor) → part files written
atomically by the driver. ``--executor local`` runs the same stages in this process
without Ray (decode on --concurrency threads, one model). Re-running with the same
OUT skips files already labelled (same path, size and mtime). Every bad file becomes
one row with an error class.

Picked up by default: video files, audio files (wav, flac, mp3, m4a, ogg, opus),
animated GIFs and raw H.264/H.265 streams; each is predicted from the modality it
has (flags ``audio_only`` / ``video_only``). Everything else in the folder is counted
as skipped in the summary; ``--list-skipped`` lists it.
"""

from __future__ import annotations

import argparse
import sys

from avfusion.labelling import LABEL_EXTENSIONS
from jobs import JobParser, executor_of, refuse, refusing


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(
        prog="avfusion label",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("input", help="folder, list file (one path per line), or fsspec URL of a folder")
    p.add_argument("out", help="Parquet dataset folder (created; part files added on each run)")
    p.add_argument("--checkpoint", required=True, help="model checkpoint (last.pt)")
    p.add_argument(
        "--windows",
        choices=["first", "all"],
        default="first",
        help="label the first clip window, or every window (one row each)",
    )
    p.add_argument(
        "--extensions",
        default=",".join(e.lstrip(".") for e in LABEL_EXTENSIONS),
        help="comma-separated file extensions to pick up in folders (default: video, audio, GIF, "
        "raw H.264/H.265)",
    )
    p.add_argument(
        "--list-skipped",
        action="store_true",
        help="print every file the extension filter skipped (the summary counts them)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write into an OUT folder that holds files label did not write (they are left as they are)",
    )
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--actors", type=int, default=1, help="model actors (one model copy each)")
    p.add_argument(
        "--gpus-per-actor",
        type=float,
        default=0.0,
        help="GPUs per model actor; 0 (default) keeps the model on the CPU even where CUDA is visible",
    )
    p.add_argument(
        "--bf16", action="store_true", help="bfloat16 autocast for the model on CUDA (softmax in fp32)"
    )
    p.add_argument("--actor-memory-mb", type=int, default=1024, help="memory reserved per model actor")
    p.add_argument("--model-batch", type=int, default=16, help="clips per model forward pass")
    p.add_argument("--decode-batch", type=int, default=4, help="files per decode task")
    p.add_argument("--part-rows", type=int, default=256, help="rows per Parquet part file")
    p.add_argument("--address", help="Ray cluster address; default: embedded local Ray (or the job's)")
    p.add_argument("--num-cpus", type=int, help="CPUs for the embedded Ray")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own log lines and progress bars, and a refused input's traceback",
    )
    p.add_argument(
        "--executor",
        choices=["ray", "local"],
        default="ray",
        help="ray (default): Ray Data decode tasks and a model actor pool; local: in this process "
        "without Ray, one model (--gpus-per-actor still picks its device)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        help="with --executor local: decode batches in flight on threads (default 1; at most the CPUs)",
    )
    return p


@refusing("avfusion label")  # a bad flag value: one line, exit 2
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from avfusion.config import ConfigError
    from avfusion.labelling import LabelConfig, label

    extensions = tuple("." + e.strip().lstrip(".").lower() for e in args.extensions.split(",") if e.strip())
    if not extensions:
        raise ConfigError(f"--extensions: {args.extensions!r} names no extension; allowed: e.g. mp4,wav")
    cfg = LabelConfig(
        input=args.input,
        out=args.out,
        checkpoint=args.checkpoint,
        every_window=args.windows == "all",
        extensions=extensions,
        list_skipped=args.list_skipped,
        top_k=args.top_k,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        actor_memory_mb=args.actor_memory_mb,
        model_batch=args.model_batch,
        decode_batch=args.decode_batch,
        part_rows=args.part_rows,
        bf16=args.bf16,
        force=args.force,
    )
    executor = executor_of(args)
    try:
        label(cfg, executor)
    except (OSError, KeyError, ValueError) as exc:
        return refuse("avfusion label", exc, args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
