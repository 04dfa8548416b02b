"""Where clips come from: VGGSound-format CSVs (more sources arrive with preprocess).

VGGSound's CSV has no header; rows are ``youtube_id,start_seconds,label,split``.
Ids may start with ``-`` and contain ``_``; labels may contain quoted commas.
A clip's key is ``{youtube_id}_{start:06d}``, which is also how downloaded clips
are usually named on disk.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from avfusion import storage
from avfusion.redact import strip_url_secrets

SPLITS = ("train", "test", "val")
MAX_START = 10_000_000  # seconds (115 days): a start beyond any video is a typo, not a clip


class SourceError(ValueError):
    """A clip list is malformed; the message names the file and line."""


@dataclass(frozen=True, slots=True)  # slots: 2,000,000 of them fit in far less memory
class ClipRow:
    youtube_id: str
    start: int
    label: str
    split: str

    @property
    def key(self) -> str:
        return clip_key(self.youtube_id, self.start)


def clip_key(youtube_id: str, start: int) -> str:
    return f"{youtube_id}_{start:06d}"


def _utf8_text(path: str | Path, data: bytes) -> str:
    """``data`` decoded (a leading BOM dropped), or ``SourceError`` naming the line of
    the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        raise SourceError(
            f"{path}:{lineno}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8"
        ) from None


def _start_seconds(where: str, value: object, what: str = "start") -> float:
    """A clip's start (or end) in seconds: a finite number 0..MAX_START, else
    ``SourceError`` naming ``where`` and the value."""
    try:
        seconds = float(value)  # type: ignore[arg-type]  # whatever the row held: checked here
    except (TypeError, ValueError):
        raise SourceError(f"{where}: {what} {value!r} is not a number of seconds") from None
    if not math.isfinite(seconds):
        raise SourceError(f"{where}: {what} {value!r} is not a finite number of seconds")
    if seconds < 0:
        raise SourceError(f"{where}: {what} {value!r} is negative; allowed: seconds 0..{MAX_START}")
    if seconds > MAX_START:
        raise SourceError(f"{where}: {what} {value!r} is out of range; allowed: seconds 0..{MAX_START}")
    return seconds


def read_vggsound_csv(path: str | Path) -> list[ClipRow]:
    """All rows of a VGGSound-format CSV; blank lines skipped, anything else malformed
    (text that is not UTF-8 included) raises ``SourceError`` with its line number (a
    silent skip would lose clips)."""
    rows: list[ClipRow] = []
    seen: dict[str, int] = {}
    shared: dict[str, str] = {}  # one string per distinct label/split (309 labels, 2M rows)
    text = _utf8_text(path, storage.read_bytes(str(path)))
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=False)
    for fields in reader:
        lineno = reader.line_num  # the physical line: a quoted field may span lines
        if not fields or all(not x.strip() for x in fields):
            continue
        if len(fields) != 4:
            raise SourceError(
                f"{path}:{lineno}: expected 4 fields (id,start,label,split), got {len(fields)}: {fields}"
            )
        youtube_id, start, label, split = (x.strip() for x in fields)
        start_s = int(_start_seconds(f"{path}:{lineno}", start))
        if not youtube_id or not label:
            raise SourceError(f"{path}:{lineno}: empty id or label: {fields}")
        if split not in SPLITS:
            raise SourceError(f"{path}:{lineno}: split {split!r} not one of {SPLITS}")
        key = clip_key(youtube_id, start_s)
        if key in seen:
            raise SourceError(f"{path}:{lineno}: duplicate clip {key} (first on line {seen[key]})")
        seen[key] = lineno
        rows.append(
            ClipRow(youtube_id, start_s, shared.setdefault(label, label), shared.setdefault(split, split))
        )
    return rows


# ----------------------------------------------------------------------------- tasks

VIDEO_EXTENSIONS = (
    ".mp4",
    ".mkv",
    ".webm",
    ".mov",
    ".avi",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".ts",
    ".flv",
    ".3gp",
    ".ogv",
)
YOUTUBE_URL = "https://www.youtube.com/watch?v={id}"
# Schemes whose URLs name files (read through avfusion.storage); http(s) URLs are pages
# or media for yt-dlp.
OBJECT_STORE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClipTask:
    """One clip to produce: where its media is and which window of it to keep."""

    key: str
    source: str  # URL, or a local path
    start: float = 0.0
    label: str | None = None
    split: str | None = None
    end: float | None = None  # None: start + the clip spec's length

    @property
    def is_remote(self) -> bool:
        """Fetched by yt-dlp (a web page or media URL), not read as a file."""
        return storage.scheme(self.source) not in ("", "file") and not self.in_storage

    @property
    def in_storage(self) -> bool:
        """A file in object storage (``s3://``, ``gs://``, …): read through fsspec."""
        return storage.scheme(self.source) in OBJECT_STORE_SCHEMES


URL_PLACEHOLDER = "{id}"


def check_url_template(template: str) -> str:
    """``template`` if it is fit to expand, else ``SourceError`` in one line. Expansion is
    plain text substitution of the literal ``{id}`` (never ``str.format``, whose fields
    could run attribute look-ups, crash or pad without bound), so the template must hold
    ``{id}`` and no other brace."""
    rest = template.replace(URL_PLACEHOLDER, "")
    if URL_PLACEHOLDER in template and "{" not in rest and "}" not in rest:
        return template
    problem = "has no {id}" if URL_PLACEHOLDER not in template else "has a brace other than in {id}"
    raise SourceError(
        f"url_template (--url-template) {_shown(template)!r} {problem}; it must contain {URL_PLACEHOLDER}, "
        "which is replaced by each clip's id, and no other { or } "
        f"(e.g. {YOUTUBE_URL})"
    )


def tasks_from_vggsound(
    rows: list[ClipRow], url_template: str = YOUTUBE_URL, allow_local_paths: bool = False
) -> list[ClipTask]:
    """``url_template`` gets ``{id}`` replaced by each row's id: the YouTube watch URL by
    default, a loopback server in tests, a mirror for users who have one. Each URL it
    gives passes ``check_source_scheme`` like a URL list's (local paths and ``file://``
    only with ``allow_local_paths``); one that does not refuses the whole list."""
    check_url_template(url_template)
    where = f"url_template (--url-template) {_shown(url_template)!r}"
    tasks = []
    for r in rows:
        url = url_template.replace(URL_PLACEHOLDER, r.youtube_id)
        tasks.append(
            ClipTask(
                key=r.key,
                source=check_source_scheme(
                    url, f"{where} for clip {r.key}", allow_local_paths, "a url_template"
                ),
                start=float(r.start),
                label=r.label,
                split=r.split,
            )
        )
    return tasks


# What a URL list may name: web pages and media (fetched by yt-dlp) and object-store
# files. A plain path or ``file://`` would be read from whichever worker's disk the clip
# lands on, so it is allowed only when asked for (``allow_local_paths``).
WEB_SCHEMES = ("http", "https")
LOCAL_SCHEMES = ("", "file")


def _shown(url: str) -> str:
    """``url`` fit to print in a refusal: no user:password@ or token in it (a string that
    ``urlsplit`` refuses, such as an unclosed ``[``, is cut to its scheme)."""
    try:
        return strip_url_secrets(url)
    except ValueError:
        return url.split("://", 1)[0] + "://…" if "://" in url else "…"


def check_source_scheme(
    url: str, where: str, allow_local_paths: bool = False, what: str = "a URL list"
) -> str:
    """``url`` as a task's source (a ``file://`` URL as its local path), or
    ``SourceError`` naming the scheme and what is allowed; ``what`` names where the URL
    came from in that refusal."""
    kind = storage.scheme(url)
    bare = None if kind else re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", url)  # javascript:, data:, mailto:
    if bare:  # a local name with a colon in it can be written ./name
        kind = bare.group(1).lower()
    if kind in WEB_SCHEMES or kind in OBJECT_STORE_SCHEMES:
        return url
    shown = _shown(url)  # the refusal is printed: no user:password@ or token in it
    if kind in LOCAL_SCHEMES:
        if allow_local_paths:
            return storage.local_path(url)
        local = "a local path" if not kind else "a file:// URL"
        raise SourceError(
            f"{where}: {shown!r} is {local}; {what} names http(s):// or object-store URLs "
            f"({', '.join(s + '://' for s in OBJECT_STORE_SCHEMES)}); pass --allow-local-paths to read "
            "local files from the worker's disk"
        )
    raise SourceError(
        f"{where}: {shown!r} has scheme {kind}:, which {what} does not take; allowed: "
        f"{', '.join(s + '://' for s in WEB_SCHEMES + OBJECT_STORE_SCHEMES)}"
        + ("" if allow_local_paths else ", and local paths with --allow-local-paths")
    )


def read_url_list(path: str | Path, allow_local_paths: bool = False) -> list[ClipTask]:
    """A CSV (with header) or Parquet table with columns ``url`` and optionally ``id``,
    ``start``, ``end``, ``label``, ``split``. Missing ``id`` → a hash of the URL.

    Every ``url`` must be ``http(s)://`` or an object-store URL (``check_source_scheme``;
    local paths and ``file://`` only with ``allow_local_paths``): one entry with another
    scheme refuses the whole list before any work, naming its row, since a list that
    names ``ftp://`` or ``javascript:`` is a mistake or an attack, not a clip to skip."""
    import hashlib

    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = str(path)  # read as bytes: see storage.read_parquet
    if path.endswith(".parquet"):
        table = storage.read_parquet(path)
    else:
        data = storage.read_bytes(path)
        _utf8_text(path, data)  # names the line; Arrow's own error names none
        try:
            table = pacsv.read_csv(pa.BufferReader(data))
        except pa.ArrowInvalid as exc:
            raise SourceError(f"{path}: {' '.join(str(exc).split())}") from None
    cols = set(table.column_names)
    if "url" not in cols:
        raise SourceError(f"{path}: needs a 'url' column, has {sorted(cols)}")
    tasks, seen = [], set()
    for i, row in enumerate(table.to_pylist(), start=1):
        where = f"{path}: row {i}"
        url = row["url"]
        if not url:
            raise SourceError(f"{where} has an empty url")
        if not isinstance(url, str):
            raise SourceError(f"{where}: url {url!r} is not text")
        url = check_source_scheme(url.strip(), where, allow_local_paths)
        start = _start_seconds(where, row.get("start") or 0.0)
        end = row.get("end")
        if end is not None and _start_seconds(where, end, "end") <= start:
            raise SourceError(f"{where}: end {end!r} is not after start {start!r}")
        ident = row.get("id") or hashlib.sha1(url.encode()).hexdigest()[:16]
        key = clip_key(str(ident), int(start))
        if key in seen:
            raise SourceError(f"{where} repeats clip {key}")
        seen.add(key)
        tasks.append(
            ClipTask(
                key=key,
                source=url,
                start=start,
                label=_text_or_none(row.get("label")),
                split=_text_or_none(row.get("split")),
                end=float(end) if end is not None else None,
            )
        )
    return tasks


def _text_or_none(value: object) -> str | None:
    """A label or split cell as text (Arrow reads a column of digits as numbers); an
    empty cell is None."""
    return None if value is None or value == "" else str(value)


def walk_folder(root: str, extensions: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(files under folder ``root`` whose name ends with one of ``extensions``, every
    other file), each sorted: the one folder walk of preprocess, evaluate and label.

    Local folders are walked without following symlinked directories (a symlink to a
    file is kept); a directory named like a media file is returned as a file, so the
    caller reports it instead of skipping it silently. Nothing found is opened here:
    FIFOs, sockets and devices are returned like files, for the caller to reject by
    their ``storage.local_kind`` (one row or failure each). A file name that is not
    UTF-8 comes back lossless (``os.fsdecode``: ``os.fsencode`` gives its bytes back;
    :func:`display_path` is its printable form). The walk goes by directory handles,
    so a file deeper than the OS's path limit is still found (and reported by the
    caller as ``path_too_long``), and a directory that cannot be listed is returned
    as found too, so that it is reported rather than lost (``storage.walk_local``).
    An object-store folder is a fresh recursive listing."""
    if not storage.is_local(root):
        every = storage.find(root)
        return (
            [p for p in every if p.lower().endswith(extensions)],
            [p for p in every if not p.lower().endswith(extensions)],
        )
    found: list[str] = []
    skipped: list[str] = []
    for path, what in storage.walk_local(storage.local_path(root)):
        named = path.lower().endswith(extensions)
        if what == "file":
            (found if named else skipped).append(path)
        elif what == "unlisted" or named:
            found.append(path)
    return sorted(found), sorted(set(skipped))


def display_path(path: str) -> str:
    """A path as valid UTF-8 text, for Parquet, JSON keys and the terminal: unchanged
    when it is UTF-8; else each byte that is not is written ``\\xNN``. Not reversible
    in general (a name may itself hold ``\\x``): what identifies a file is
    ``os.fsencode(path)``, stored beside it."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        pass
    try:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
        return path.encode("utf-8", "backslashreplace").decode("utf-8")


def relative_path(root: str, path: str) -> str:
    """``path`` (from :func:`walk_folder`) relative to ``root``, with ``/`` separators."""
    root = str(root).rstrip("/")
    if storage.is_local(root):
        return Path(path).relative_to(storage.local_path(root)).as_posix()
    return path[len(root) + 1 :]


def scan_folder(
    root: str | Path,
    labels_csv: str | Path | None = None,
    labels_from_dirs: bool = False,
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS,
) -> tuple[list[ClipTask], list[ClipRow]]:
    """Video files under ``root`` (recursive, sorted, symlinks not followed into
    directories) as tasks.

    With a VGGSound-format ``labels_csv``, a file matches a row when its stem is
    ``{id}_{start:06d}`` (already the clip: window starts at 0) or ``{id}`` (the full
    video: window starts at ``start``). Returns the tasks and the CSV rows with no
    file (to be recorded as failures, not silently dropped). Files matching no row
    stay in, unlabelled. With ``labels_from_dirs`` the label is the first directory
    under ``root``.
    """
    root = str(root).rstrip("/") or str(root)
    if not storage.isdir(root):
        raise SourceError(f"{root} is not a directory")
    found, _ = walk_folder(root, extensions)
    files = [(path, PurePosixPath(relative_path(root, path))) for path in found]
    rows = read_vggsound_csv(labels_csv) if labels_csv else []
    by_key = {r.key: r for r in rows}
    by_id: dict[str, list[ClipRow]] = {}
    for r in rows:
        by_id.setdefault(r.youtube_id, []).append(r)
    tasks, matched = [], set()
    for path, rel in sorted(files):
        stem = rel.name[: -len(rel.suffix)] if rel.suffix else rel.name
        if stem in by_key:
            r = by_key[stem]
            tasks.append(ClipTask(key=r.key, source=path, label=r.label, split=r.split))
            matched.add(r.key)
        elif stem in by_id:
            for r in by_id[stem]:
                if r.key not in matched:
                    tasks.append(
                        ClipTask(key=r.key, source=path, start=float(r.start), label=r.label, split=r.split)
                    )
                    matched.add(r.key)
        else:
            label = rel.parts[0] if labels_from_dirs and len(rel.parts) > 1 else None
            key = _text_key(str(rel.with_suffix("")) if rel.suffix else str(rel))
            tasks.append(ClipTask(key=key, source=path, label=label, split="train" if label else None))
    missing = [r for r in rows if r.key not in matched]
    return tasks, missing


def _text_key(name: str) -> str:
    """A clip key for a file name: the name itself when it is UTF-8; else its display
    form and a hash of its bytes, so that it stays apart from a file literally named
    like that display form (keys name tar members and JSON fields: text only)."""
    shown = display_path(name)
    if shown == name:
        return name
    return f"{shown}~{hashlib.sha1(os.fsencode(name)).hexdigest()[:8]}"


def filter_tasks(
    tasks: list[ClipTask],
    splits: list[str] | None = None,
    labels: list[str] | None = None,
    limit: int | None = None,
) -> list[ClipTask]:
    """Keep the given splits and labels (all when None), then the first ``limit``."""
    kept = [t for t in tasks if (not splits or t.split in splits) and (not labels or t.label in labels)]
    return kept[:limit] if limit is not None else kept
