"""The label run, wired in one place: what to label, what is already done, the parts.

Scan the input, skip what an earlier run labelled (resume by path, size and mtime),
hand the rest to an executor as a two-stage pipeline (:func:`pipeline`: decode files,
then predict), write the labelled batches as part files cut only where a file ends,
and clean up rows that a later run superseded. ``label(cfg, executor)`` is what
``avfusion label`` calls; the executor decides where the stages run
(``InProcessExecutor``: here, no Ray; ``RayExecutor``: Ray Data) and is entered only
when a file is left to label.
"""

from __future__ import annotations

import os
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from avfusion import storage
from avfusion.config import bounded, check_bounds
from avfusion.executor import BatchPipeline, Executor
from avfusion.sources import VIDEO_EXTENSIONS, display_path, relative_path, walk_folder

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus")
# Animated images and elementary video streams: no container, still labelable video.
OTHER_EXTENSIONS = (".gif", ".h264", ".264", ".h265", ".hevc")
LABEL_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS + OTHER_EXTENSIONS
# Row errors that say nothing about the file (the store or the worker failed): such a
# row is relabelled on the next run, and replaced, not duplicated.
TRANSIENT_ERRORS = frozenset({"fetch_error", "internal_error"})
PARTS = "part-*.parquet"
# The output folder's marker (see ``storage.claim_folder``) and the names of the files
# label writes there (``part-{run}-{number}.parquet``): the only names it ever replaces
# or cleans up.
MARKER = ".avfusion-labels"
# A part's name is label's alone: proof that a folder without the marker (written
# before the marker existed) is a label output.
PROOF = re.compile(r"part-[0-9a-f]{8}-\d{5}\.parquet")
OUR_NAMES = re.compile(PROOF.pattern + "|" + re.escape(MARKER))

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

    from avfusion.config import ClipSpec


@dataclass(frozen=True)
class LabelConfig:
    """One label run (``avfusion label``'s flags; where it runs is the executor's)."""

    input: str
    out: str
    checkpoint: str
    every_window: bool = False
    extensions: tuple[str, ...] = LABEL_EXTENSIONS
    list_skipped: bool = False
    top_k: int = bounded(5, ge=1, le=1000)
    actors: int = bounded(1, ge=1, le=1024)
    gpus_per_actor: float = bounded(0.0, ge=0, le=64)
    actor_memory_mb: int = bounded(1024, ge=1, le=1 << 22)
    model_batch: int = bounded(16, ge=1, le=65_536)
    decode_batch: int = bounded(4, ge=1, le=65_536)
    part_rows: int = bounded(256, ge=1, le=10_000_000)
    bf16: bool = False
    force: bool = False  # write into an ``out`` that holds files label did not write

    def __post_init__(self) -> None:
        check_bounds(self, "label")


# ----------------------------------------------------------------------------- input


def scan_inputs(source: str, extensions: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(paths to label, paths the extension filter skipped) under a folder (local or
    an fsspec URL; see :func:`avfusion.sources.walk_folder`) or from a list file. A
    list file skips nothing: it names exactly what to label."""
    if storage.isfile(source):
        return _list_file(source), []
    if not storage.isdir(source):
        raise FileNotFoundError(f"{source} is neither a folder nor a list file")
    return walk_folder(source.rstrip("/") or source, extensions)


def list_inputs(source: str, extensions: tuple[str, ...]) -> list[str]:
    """The paths :func:`scan_inputs` would label."""
    return scan_inputs(source, extensions)[0]


def _list_file(url: str) -> list[str]:
    # A listed path is bytes as the OS names it: a line that is not UTF-8 stays that path.
    lines = storage.read_bytes(url).decode("utf-8", "surrogateescape").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def build_items(paths: list[str], root: str | None, done: set[tuple[str, int, int]]) -> list[dict]:
    """The rows the executor gets: each path not in ``done`` with its identity (size,
    mtime_ns) and its key (the path relative to ``root``, the folder scanned; the
    path itself for a list file)."""
    items = []
    for p in paths:
        size, mtime = storage.identity(p)
        if (p, size, mtime) not in done:
            items.append(
                {
                    "path": display_path(p),  # text for Ray's Arrow blocks and the table
                    "path_bytes": os.fsencode(p),  # the name exactly, whatever its bytes
                    "key": display_path(relative_path(root, p) if root else p),
                    "file_size": size,
                    "mtime_ns": mtime,
                }
            )
    return items


# ----------------------------------------------------------------------------- resume


def read_parts(out: str, columns: list[str] | None = None) -> pa.Table | None:
    """All part files of ``out`` (a fresh listing) as one table, or None."""
    import pyarrow as pa

    tables = [_read_part(url, columns) for url in storage.list_files(out, PARTS)]
    return pa.concat_tables(tables) if tables else None


def _read_part(url: str, columns: list[str] | None = None) -> pa.Table:
    """One part file in the current schema; a part written before ``path_bytes``
    existed gets it from ``path`` (such a part's paths were all UTF-8)."""
    import pyarrow as pa

    from avfusion.labelling.schema import SCHEMA

    table = storage.read_parquet(url)
    if "path_bytes" not in table.column_names:
        paths = table.column("path").to_pylist()
        table = table.append_column("path_bytes", pa.array([os.fsencode(p) for p in paths], pa.binary()))
    return table.select(columns or [n for n in SCHEMA.names if n in table.column_names])


def done_identities(out: str) -> set[tuple[str, int, int]]:
    """(path, size, mtime_ns) of files already labelled; rows with a transient error
    do not count (they are retried)."""
    names = ["path_bytes", "file_size", "mtime_ns", "error_class"]
    table = read_parts(out, names)
    if table is None:
        return set()
    columns = (table.column(c).to_pylist() for c in names)
    return {(os.fsdecode(p), s, m) for p, s, m, e in zip(*columns, strict=True) if e not in TRANSIENT_ERRORS}


def drop_superseded(out: str) -> int:
    """Remove transient-error rows of files that have since been labelled (by a later
    run), rewriting each affected part atomically; returns the rows dropped."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = read_parts(out, ["path_bytes", "error_class"])
    if table is None:
        return 0
    rows = list(
        zip(table.column("path_bytes").to_pylist(), table.column("error_class").to_pylist(), strict=True)
    )
    settled = {p for p, e in rows if e not in TRANSIENT_ERRORS}
    stale = pa.array(sorted({p for p, e in rows if e in TRANSIENT_ERRORS and p in settled}), type=pa.binary())
    transient = pa.array(sorted(TRANSIENT_ERRORS), type=pa.string())
    dropped = 0
    for url in storage.list_files(out, PARTS):
        part = _read_part(url)
        drop = pc.and_(
            pc.is_in(part.column("path_bytes"), value_set=stale),
            pc.is_in(pc.fill_null(part.column("error_class"), ""), value_set=transient),
        )
        n = pc.sum(drop).as_py() or 0
        if n:
            with storage.atomic_file(url) as tmp:
                pq.write_table(part.filter(pc.invert(drop)), tmp)
            dropped += n
    return dropped


def remove_partial_parts(out: str) -> None:
    """Delete local part files a killed run left under their temporary name (and no
    other file: see ``OUR_NAMES``)."""
    storage.remove_own_leftovers(out, OUR_NAMES)


# ----------------------------------------------------------------------------- output


def write_parts(
    batches: Iterable[dict[str, Any]], out: str, part_rows: int, on_files: Callable[[int], None] | None = None
) -> list[str]:
    """Write labelled batches (Predictor output, numpy columns) as part files of about
    ``part_rows`` rows, cut only where a file's last window ends (so resume by file is
    exact), each under a temporary name then renamed. ``on_files(n)``: n more files
    complete (the progress bar). Returns the part URLs written."""
    import numpy as np
    import pyarrow as pa

    from avfusion.labelling.schema import to_table

    run, buffer = uuid.uuid4().hex[:8], None
    written: list[str] = []
    for batch in batches:
        table = to_table(batch)
        buffer = table if buffer is None else pa.concat_tables([buffer, table])
        if on_files is not None:
            last = np.asarray(batch["window_index"]) == np.asarray(batch["window_count"]) - 1
            on_files(int(np.sum(last)))
        while buffer.num_rows >= part_rows:
            ends = _file_ends(buffer)
            cuts = ends[ends >= part_rows]
            if not len(cuts):
                break
            written.append(_write_part(buffer.slice(0, int(cuts[0])), out, run, len(written)))
            buffer = buffer.slice(int(cuts[0]))
    if buffer is not None and buffer.num_rows:
        written.append(_write_part(buffer, out, run, len(written)))
    return written


def _file_ends(table: pa.Table) -> np.ndarray:
    """Row positions just after a file's last window."""
    import numpy as np

    index = np.asarray(table.column("window_index"))
    count = np.asarray(table.column("window_count"))
    return np.flatnonzero(index == count - 1) + 1


def _write_part(table: pa.Table, out: str, run: str, number: int) -> str:
    import pyarrow.parquet as pq

    url = storage.join(out, f"part-{run}-{number:05d}.parquet")
    with storage.atomic_file(url) as tmp:
        pq.write_table(table, tmp)
    return url


def summary(table: pa.Table, skipped: Sequence[str] = ()) -> str:
    """The run's closing lines: rows, files, top labels, flags, errors, skipped files."""
    rows = table.to_pylist()
    errors = Counter(r["error_class"] for r in rows if r["error_class"])
    labels = Counter(r["predicted_label"] for r in rows if not r["error_class"])
    flags = Counter(f for r in rows if not r["error_class"] for f in (r.get("flags") or []))
    lines = [
        f"\n{len(rows)} rows from {len({r['path_bytes'] for r in rows})} files; "
        f"{sum(errors.values())} errors; {len(skipped)} files skipped by the extension filter"
    ]
    lines += [f"  {label:<32}{n:>8}" for label, n in labels.most_common(20)]
    lines += [f"  flag: {flag:<26}{n:>8}" for flag, n in flags.most_common()]
    lines += [f"  error: {kind:<25}{n:>8}" for kind, n in errors.most_common()]
    if skipped:
        by_ext = Counter(display_path(os.path.splitext(p)[1].lower()) or "(none)" for p in skipped)
        lines.append(
            "  skipped: "
            + ", ".join(f"{ext} {n}" for ext, n in by_ext.most_common())
            + "  (--list-skipped lists them)"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the run


def pipeline(cfg: LabelConfig, clip: ClipSpec) -> BatchPipeline:
    """The label job's stages: ``DecodeRows`` over files, then ``Predictor`` instances
    (one checkpoint load each) over the decoded windows."""
    from avfusion.labelling.worker import DecodeRows, Predictor

    return BatchPipeline(
        decode=DecodeRows(clip, cfg.every_window),
        decode_batch=cfg.decode_batch,
        model=Predictor,
        model_kwargs={"checkpoint": str(cfg.checkpoint), "top_k": cfg.top_k, "bf16": cfg.bf16},
        model_batch=cfg.model_batch,
        instances=cfg.actors,
        gpus=cfg.gpus_per_actor,
        memory_mb=cfg.actor_memory_mb,
    )


def label(cfg: LabelConfig, executor: Executor) -> int:
    """Label ``cfg.input`` into ``cfg.out`` through ``executor``; returns the number of
    rows in ``out``. Raises OSError/KeyError/ValueError for an unreadable input or
    checkpoint, and ``storage.StorageError`` (an OSError) for an ``out`` that holds
    files label did not write (unless ``cfg.force``) or cannot be written, all before
    anything is written."""
    from tqdm import tqdm

    from avfusion.checkpoint import load as load_checkpoint
    from avfusion.config import ClipSpec

    paths, skipped = scan_inputs(cfg.input, cfg.extensions)
    clip = ClipSpec(**load_checkpoint(cfg.checkpoint)["clip"])
    out = cfg.out.rstrip("/")
    # one line if out is not ours or not writable
    storage.claim_folder(out, MARKER, OUR_NAMES, cfg.force, proof=PROOF)
    remove_partial_parts(out)
    drop_superseded(out)  # a killed run may have relabelled files without dropping their old rows
    root = cfg.input.rstrip("/") if storage.isdir(cfg.input) else None
    items = build_items(paths, root, done_identities(out))
    print(
        f"{len(paths)} files, {len(paths) - len(items)} already labelled in {out}, {len(items)} to label; "
        f"{len(skipped)} skipped by the extension filter"
    )
    if cfg.list_skipped:
        for p in skipped:
            print(f"  skipped: {display_path(p)}")
    if items:
        with executor, tqdm(total=len(items), desc="label", unit="file") as bar:
            write_parts(executor.map_batches(pipeline(cfg, clip), items), out, cfg.part_rows, bar.update)
        drop_superseded(out)
    table = read_parts(out)
    print(summary(table, skipped) if table is not None else "no rows")
    return 0 if table is None else table.num_rows


def predict(path: str, checkpoint: str, top_k: int = 5) -> dict:
    """Label one clip in-process (``avfusion predict``): the row the job writes, less
    ``path_bytes``."""
    from avfusion.checkpoint import load as load_checkpoint
    from avfusion.config import ClipSpec
    from avfusion.labelling.schema import rows_to_batch, to_table
    from avfusion.labelling.worker import DecodeRows, Predictor

    clip = ClipSpec(**load_checkpoint(checkpoint)["clip"])
    size, mtime = storage.identity(str(path))
    rows = DecodeRows(clip).decode_file(str(path), storage.basename(str(path)).rsplit(".", 1)[0], size, mtime)
    row = to_table(Predictor(str(checkpoint), top_k)(rows_to_batch(rows))).to_pylist()[0]
    del row["path_bytes"]  # the caller's own path, and bytes have no JSON form (predict --json)
    return row
