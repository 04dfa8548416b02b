"""`avfusion label INPUT OUT --checkpoint CKPT`: label videos into a Parquet dataset.

INPUT is a folder (recursive), a text file listing paths, or an fsspec URL of a
folder. On Ray Data: file list → decode in CPU tasks → model in an actor pool that
loads the checkpoint once (a GPU each when --gpus-per-actor) → part files written
atomically by the driver. Re-running with the same OUT skips files already labelled
(same path, size and mtime). Every bad file becomes one row with an error class.

Picked up by default: video files, audio files (wav, flac, mp3, m4a, ogg, opus),
animated GIFs and raw H.264/H.265 streams; each is predicted from the modality it
has (flags ``audio_only`` / ``video_only``). Everything else in the folder is counted
as skipped in the summary; ``--list-skipped`` lists it.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections import Counter

from avfusion import storage
from avfusion.sources import VIDEO_EXTENSIONS

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus")
# Animated images and elementary video streams: no container, still labelable video.
OTHER_EXTENSIONS = (".gif", ".h264", ".264", ".h265", ".hevc")
LABEL_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS + OTHER_EXTENSIONS
# Row errors that say nothing about the file (the store or the worker failed): such a
# row is relabelled on the next run, and replaced, not duplicated.
TRANSIENT_ERRORS = frozenset({"fetch_error", "internal_error"})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avfusion label", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("input", help="folder, list file (one path per line), or fsspec URL of a folder")
    p.add_argument("out", help="Parquet dataset folder (created; part files added on each run)")
    p.add_argument("--checkpoint", required=True, help="model checkpoint (last.pt)")
    p.add_argument("--windows", choices=["first", "all"], default="first",
                   help="label the first clip window, or every window (one row each)")
    p.add_argument("--extensions", default=",".join(e.lstrip(".") for e in LABEL_EXTENSIONS),
                   help="comma-separated file extensions to pick up in folders (default: video, audio, GIF, "
                        "raw H.264/H.265)")
    p.add_argument("--list-skipped", action="store_true",
                   help="print every file the extension filter skipped (the summary counts them)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--actors", type=int, default=1, help="model actors (one model copy each)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--actor-memory-mb", type=int, default=1024, help="memory reserved per model actor")
    p.add_argument("--model-batch", type=int, default=16, help="clips per model forward pass")
    p.add_argument("--decode-batch", type=int, default=4, help="files per decode task")
    p.add_argument("--part-rows", type=int, default=256, help="rows per Parquet part file")
    p.add_argument("--address", help="Ray cluster address; default: embedded local Ray (or the job's)")
    p.add_argument("--num-cpus", type=int, help="CPUs for the embedded Ray")
    p.add_argument("--verbose", action="store_true", help="show Ray's own log lines and progress bars")
    return p


def list_inputs(source: str, extensions: tuple[str, ...]) -> list[str]:
    """Media paths under a folder (symlinks to files kept, directories not followed),
    from a list file, or under an fsspec URL (downloaded on read by fsspec)."""
    return scan_inputs(source, extensions)[0]


def scan_inputs(source: str, extensions: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(paths to label, paths the extension filter skipped). A list file skips nothing:
    it names exactly what to label."""
    if not storage.is_local(source):  # s3://, gs://, …: a fresh recursive listing
        if storage.isfile(source):
            return _list_file(source), []
        every = storage.find(source)
        if not every and not storage.isdir(source):
            raise FileNotFoundError(f"{source} is neither a folder nor a list file")
        return ([p for p in every if p.lower().endswith(extensions)],
                [p for p in every if not p.lower().endswith(extensions)])
    path = storage.local_path(source)
    if os.path.isfile(path):
        return _list_file(path), []
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{source} is neither a folder nor a list file")
    found, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        dirnames.sort()
        names = filenames + [d for d in dirnames if d.lower().endswith(extensions)]
        for n in names:
            (found if n.lower().endswith(extensions) else skipped).append(os.path.join(dirpath, n))
    return sorted(found), sorted(skipped)


def _list_file(url: str) -> list[str]:
    return [line.strip() for line in storage.read_text(url).splitlines() if line.strip() and not line.startswith("#")]


def read_parts(out: str, columns: list[str] | None = None):
    """All part files of ``out`` (a fresh listing) as one table, or None."""
    import pyarrow as pa

    tables = [storage.read_parquet(url, columns) for url in storage.list_files(out, "part-*.parquet")]
    return pa.concat_tables(tables) if tables else None


def done_identities(out: str) -> set[tuple[str, int, int]]:
    """Files already labelled; rows with a transient error do not count (retried)."""
    table = read_parts(out, ["path", "file_size", "mtime_ns", "error_class"])
    if table is None:
        return set()
    return {(p, s, m) for p, s, m, e in zip(*(table.column(c).to_pylist()
                                              for c in ("path", "file_size", "mtime_ns", "error_class")))
            if e not in TRANSIENT_ERRORS}


def drop_superseded(out: str) -> int:
    """Remove transient-error rows of files that have since been labelled (by a later
    run), rewriting each affected part atomically; returns the rows dropped."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = read_parts(out, ["path", "error_class"])
    if table is None:
        return 0
    rows = list(zip(table.column("path").to_pylist(), table.column("error_class").to_pylist()))
    settled = {p for p, e in rows if e not in TRANSIENT_ERRORS}
    stale = {p for p, e in rows if e in TRANSIENT_ERRORS and p in settled}
    dropped = 0
    for url in storage.list_files(out, "part-*.parquet"):
        part = storage.read_parquet(url)
        drop = pc.and_(pc.is_in(part.column("path"), value_set=pa_array(stale)),
                       pc.is_in(pc.fill_null(part.column("error_class"), ""), value_set=pa_array(TRANSIENT_ERRORS)))
        n = pc.sum(drop).as_py() or 0
        if n:
            with storage.atomic_file(url) as tmp:
                pq.write_table(part.filter(pc.invert(drop)), tmp)
            dropped += n
    return dropped


def pa_array(values) -> "pa.Array":
    import pyarrow as pa

    return pa.array(sorted(values), type=pa.string())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    from avfusion.config import ClipSpec
    from avfusion.label import DecodeRows, Predictor, file_identity
    from avfusion.train import load_checkpoint
    from avfusion.executor.ray_tasks import ray_session

    exts = tuple("." + e.strip().lstrip(".").lower() for e in args.extensions.split(",") if e.strip())
    try:
        paths, skipped = scan_inputs(args.input, exts)
        clip = ClipSpec(**load_checkpoint(args.checkpoint)["clip"])
    except (OSError, KeyError, ValueError) as exc:
        print(f"avfusion label: {exc}", file=sys.stderr)
        return 2
    out = args.out.rstrip("/")
    storage.makedirs(out)
    for stale in storage.list_files(out, ".part-*"):  # a local part cut short by a killed run
        storage.remove(stale)
    drop_superseded(out)  # a killed run may have relabelled files without dropping their old rows
    done = done_identities(out)
    root = args.input.rstrip("/") if storage.isdir(args.input) else None
    items = []
    for p in paths:
        size, mtime = file_identity(p)
        if (p, size, mtime) in done:
            continue
        key = (os.path.relpath(p, root) if storage.is_local(root) else p[len(root) + 1:]) if root else p
        items.append({"path": p, "key": key, "file_size": size, "mtime_ns": mtime})
    print(f"{len(paths)} files, {len(paths) - len(items)} already labelled in {out}, {len(items)} to label; "
          f"{len(skipped)} skipped by the extension filter")
    if args.list_skipped:
        for p in skipped:
            print(f"  skipped: {p}")
    if items:
        with ray_session(args.address, args.num_cpus, verbose=args.verbose, data=True):
            import ray

            ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // args.decode_batch))
            # Ray Data spreads tasks over the nodes by default: decode fans out.
            ds = ds.map_batches(DecodeRows(clip, args.windows == "all"), batch_size=args.decode_batch, num_cpus=1)
            ds = ds.map_batches(Predictor, fn_constructor_kwargs={"checkpoint": str(args.checkpoint),
                                                                  "top_k": args.top_k},
                                batch_size=args.model_batch, compute=ray.data.ActorPoolStrategy(size=args.actors),
                                num_gpus=args.gpus_per_actor,
                                num_cpus=0 if args.gpus_per_actor else 1,
                                # Reserving the model's memory also keeps decode a separate
                                # stage of CPU tasks (Ray fuses stages with equal resources).
                                memory=args.actor_memory_mb * 2**20)
            _write_parts(ds, out, args.part_rows, tqdm(total=len(items), desc="label", unit="file"))
        drop_superseded(out)
    table = read_parts(out)
    if table is None:
        print("no rows")
        return 0
    _summary(table, skipped)
    return 0


def _write_parts(ds, out: str, part_rows: int, bar) -> None:
    """Write rows as part files of about ``part_rows`` rows, cut only where a file's
    last window ends (so resume by file is exact), each under a temp name then renamed."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from avfusion.label import to_table

    run = uuid.uuid4().hex[:8]
    part = 0

    def flush(table: pa.Table) -> None:
        nonlocal part
        if table.num_rows == 0:
            return
        with storage.atomic_file(storage.join(out, f"part-{run}-{part:05d}.parquet")) as tmp:
            pq.write_table(table, tmp)
        part += 1

    buffer = None
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        table = to_table(batch)
        buffer = table if buffer is None else pa.concat_tables([buffer, table])
        bar.update(int(np.sum(batch["window_index"] == batch["window_count"] - 1)))
        while buffer.num_rows >= part_rows:
            index = np.asarray(buffer.column("window_index"))
            count = np.asarray(buffer.column("window_count"))
            ends = np.flatnonzero(index == count - 1) + 1  # row positions just after a complete file
            cuts = ends[ends >= part_rows]
            if not len(cuts):
                break
            flush(buffer.slice(0, int(cuts[0])))
            buffer = buffer.slice(int(cuts[0]))
    if buffer is not None:
        flush(buffer)
    bar.close()


def _summary(table, skipped: list[str] = ()) -> None:
    rows = table.to_pylist()
    errors = Counter(r["error_class"] for r in rows if r["error_class"])
    labels = Counter(r["predicted_label"] for r in rows if not r["error_class"])
    flags = Counter(f for r in rows if not r["error_class"] for f in (r.get("flags") or []))
    print(f"\n{len(rows)} rows from {len({r['path'] for r in rows})} files; {sum(errors.values())} errors; "
          f"{len(skipped)} files skipped by the extension filter")
    for label, n in labels.most_common(20):
        print(f"  {label:<32}{n:>8}")
    for flag, n in flags.most_common():
        print(f"  flag: {flag:<26}{n:>8}")
    for kind, n in errors.most_common():
        print(f"  error: {kind:<25}{n:>8}")
    if skipped:
        by_ext = Counter(os.path.splitext(p)[1].lower() or "(none)" for p in skipped)
        print("  skipped: " + ", ".join(f"{ext} {n}" for ext, n in by_ext.most_common())
              + "  (--list-skipped lists them)")


if __name__ == "__main__":
    sys.exit(main())
