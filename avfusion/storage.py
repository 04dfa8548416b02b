"""Every file the project reads or writes goes through here, addressed by URL.

A Ray cluster (KubeRay, ``ray up``) shares no disk, so inputs, shards, checkpoints,
metrics, reports and Parquet parts live in object storage as often as on a local disk.
fsspec gives one interface for both; this module adds the three rules that make it
correct on an object store:

- **Fresh listings.** fsspec caches directory listings per filesystem instance (and
  instances are shared within a process), so a listing made before Ray tasks wrote their
  shards would hide them. Every ``list``/``glob``/``exists`` here invalidates the cache
  first: a listing that decides correctness is never stale.
- **Atomic publish.** A reader never sees a partial file under its final name. Locally:
  write a temp file beside the target, then ``os.replace``. On an object store a PUT (or
  a completed multipart upload) makes the whole object appear at once, so the object is
  written whole under its final name; where an object is a *marker* for another
  (stats after tar, manifest last) the caller writes the marker last.
- **No local path from a URL.** ``Path("s3://b/k")`` silently becomes a local folder
  named ``s3:``; here URLs stay strings, ``join`` keeps the scheme, and ``makedirs`` is a
  no-op on object stores (they have no directories).

Credentials and endpoints are configured the way every S3 tool is configured: the AWS
variables, profiles and ``AWS_ENDPOINT_URL`` (MinIO, Ceph, R2, moto), which botocore
reads itself; nothing here reads the environment.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import posixpath
import re
import shutil
import stat
import tempfile
import time
import uuid
from builtins import open as builtins_open
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, BinaryIO

import fsspec

if TYPE_CHECKING:
    import pyarrow as pa

LOCAL_PROTOCOLS = ("file", "local")


def scheme(url: str) -> str:
    """``'s3'`` for ``s3://b/k``; ``''`` for a plain local path."""
    url = str(url)
    return url.split("://", 1)[0].lower() if "://" in url else ""


def is_local(url: str) -> bool:
    """True for a plain path or a ``file://`` URL."""
    return scheme(url) in ("",) + LOCAL_PROTOCOLS


def local_path(url: str) -> str:
    """The filesystem path of a local URL (``file:///x`` → ``/x``)."""
    url = str(url)
    if not is_local(url):
        raise ValueError(f"{url} is not a local path")
    return url.split("://", 1)[1] if "://" in url else url


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path within it (no trailing slash)."""
    fs, path = fsspec.core.url_to_fs(str(url))
    return fs, path.rstrip("/") or path


def join(base: str, *parts: str) -> str:
    """Join path parts, keeping a URL's scheme (``os.path.join`` for local paths)."""
    base = str(base)
    if is_local(base):
        return os.path.join(base, *parts)
    return posixpath.join(base.rstrip("/"), *(p.strip("/") for p in parts))


def basename(url: str) -> str:
    return posixpath.basename(str(url).rstrip("/"))


def _url_of(fs: fsspec.AbstractFileSystem, path: str, like: str) -> str:
    """A path returned by ``fs`` as a URL in the same style as ``like``."""
    if is_local(like) and "://" not in str(like):
        return path
    return fs.unstrip_protocol(path)


def _fresh(fs: fsspec.AbstractFileSystem, path: str | None = None) -> None:
    # Invalidate everything: s3fs keys its cache by parent prefix, and a partial
    # invalidation can leave a stale parent listing that hides new children.
    fs.invalidate_cache()


# ----------------------------------------------------------------------------- reading


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    _fresh(fs, path)
    return fs.exists(path)


def isdir(url: str) -> bool:
    fs, path = filesystem(url)
    _fresh(fs, path)
    return fs.isdir(path)


def isfile(url: str) -> bool:
    fs, path = filesystem(url)
    _fresh(fs, path)
    return fs.isfile(path)


def info(url: str) -> dict[str, Any]:
    fs, path = filesystem(url)
    _fresh(fs, path)
    return fs.info(path)


def identity(url: str) -> tuple[int, int]:
    """(size, mtime in ns) of a file: what resume-by-file compares. Object stores give
    LastModified; a missing file is (-1, -1)."""
    if is_local(url):
        p = local_path(url)
        try:
            st = os.stat(p)
        except OSError:
            try:
                st = os.lstat(p)
            except OSError:
                return -1, -1
        return st.st_size, st.st_mtime_ns
    try:
        meta = info(url)
    except (OSError, FileNotFoundError):
        return -1, -1
    modified: Any = meta.get("LastModified") or meta.get("mtime") or meta.get("updated")
    if hasattr(modified, "timestamp"):
        ns = int(modified.timestamp() * 1e9)
    elif isinstance(modified, (int, float)):
        ns = int(modified * 1e9)
    else:
        ns = 0
    return int(meta.get("size") or 0), ns


def local_kind(path: str) -> str:
    """What a local path is, as the OS sees it, found by ``stat`` alone (nothing is
    opened: opening a FIFO blocks until a writer comes): ``'file'`` (a regular file
    the process may read), ``'dir'``, ``'fifo'``, ``'socket'``, ``'device'``,
    ``'missing'`` (a dangling link too), ``'too_long'`` (the path exceeds the OS's
    limit), ``'loop'`` (a symlink loop), ``'unreadable'`` (no read permission) or
    ``'error'`` (the OS failed to say: EIO and the like). fsspec is not asked: it would
    read a ``::`` in a file name as a URL chain."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return {
            errno.ENAMETOOLONG: "too_long",
            errno.ELOOP: "loop",
            errno.ENOENT: "missing",
            errno.ENOTDIR: "missing",
            errno.EACCES: "unreadable",
        }.get(exc.errno or 0, "error")
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if not stat.S_ISREG(mode):
        return "error"
    return "file" if os.access(path, os.R_OK) else "unreadable"


def list_names(url: str) -> list[str]:
    """The names directly in folder ``url``, hidden ones too (sorted, fresh); [] when
    it does not exist. Whether a folder is empty, or holds only our files, is decided
    on this."""
    if is_local(url):
        try:
            return sorted(os.fsdecode(n) for n in os.listdir(os.fsencode(local_path(url))))
        except (FileNotFoundError, NotADirectoryError):
            return []
    fs, path = filesystem(url)
    _fresh(fs, path)
    try:
        return sorted(basename(p) for p in fs.ls(path, detail=False) if p.rstrip("/") != path)
    except FileNotFoundError:
        return []


def walk_local(top: str) -> list[tuple[str, str]]:
    """Every entry under local folder ``top`` as (path, what), ``what`` being ``'file'``
    (anything that is not a directory: FIFOs, sockets, devices and symlink loops too;
    none is opened), ``'dir'`` (walked into), ``'linked_dir'`` (a symlink to a
    directory: not followed) or ``'unlisted'`` (a directory that could not be listed).

    A directory deeper than the OS's path limit (4,096 bytes on Linux) is reached one
    component at a time through directory handles, so such a tree is walked whole; its
    deep paths come back as strings a caller cannot open, which ``local_kind`` calls
    ``'too_long'``. No recursion and one handle at a time: depth costs neither stack
    nor file descriptors. Names are ``os.fsdecode``d: lossless for any bytes."""
    entries: list[tuple[str, str]] = []
    pending: list[list[str]] = [[]]  # directories to list, as components under top
    while pending:
        parts = pending.pop()
        dirpath = os.path.join(top, *parts)
        try:
            fd = _open_dir(top, parts)
        except OSError:
            if not parts:
                raise
            entries.append((dirpath, "unlisted"))
            continue
        subdirs = []
        try:  # entries are classified while the handle is open: a link is resolved through it
            for entry in sorted(os.scandir(fd), key=lambda e: e.name):
                path = os.path.join(dirpath, entry.name)
                try:
                    is_dir = entry.is_dir()  # follows a symlink: a link to a folder is not a file
                    linked = entry.is_symlink()
                except OSError:
                    is_dir = linked = False
                if not is_dir:
                    entries.append((path, "file"))
                elif linked:
                    entries.append((path, "linked_dir"))
                else:
                    entries.append((path, "dir"))
                    subdirs.append([*parts, entry.name])
        except OSError:
            entries.append((dirpath, "unlisted"))
        finally:
            os.close(fd)
        pending.extend(reversed(subdirs))
    return entries


def _open_dir(top: str, parts: list[str]) -> int:
    """A handle on directory ``top/parts…``: by its path when the OS can take it, else
    one component at a time from ``top`` (never following a symlink below ``top``)."""
    flags = os.O_RDONLY | os.O_DIRECTORY
    path = os.path.join(top, *parts)
    if len(os.fsencode(path)) < 4000:
        return os.open(path, flags | (os.O_NOFOLLOW if parts else 0))
    fd = os.open(top, flags)
    for name in parts:
        try:
            child = os.open(name, flags | os.O_NOFOLLOW, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def open(url: str, mode: str = "rb", **kwargs: Any) -> IO[Any]:  # noqa: A001 - the module's one opener
    """Open for reading (streams from object stores). Writing goes through ``write_*``
    or ``atomic_file`` so that nothing appears half-written."""
    if any(c in mode for c in "wax+"):
        raise ValueError("storage.open is for reading; use write_bytes/write_text/atomic_file to write")
    fs, path = filesystem(url)
    return fs.open(path, mode, **kwargs)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def sha256(url: str, chunk: int = 1 << 20) -> str:
    """The SHA-256 of the file at ``url``, hex, read in ``chunk``-byte pieces."""
    import hashlib

    digest = hashlib.sha256()
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_small(url: str, max_bytes: int, what: str = "file") -> bytes:
    """A small input a user names (a config, cookies, a proxy list) read whole, or
    ``OSError`` in one line: a local path must be a regular file (a FIFO, ``/dev/zero``
    or a folder would block or never end), and nothing over ``max_bytes`` is read."""
    if is_local(url):
        kind = local_kind(local_path(url))
        if kind != "file":
            raise OSError(f"{what} {url} is not a regular file ({kind})")
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OSError(f"{what} {url} is larger than {max_bytes} bytes")
    return data


def read_parquet(url: str, columns: list[str] | None = None) -> pa.Table:
    """A Parquet file as a pyarrow Table, read whole into an Arrow-owned buffer first.
    pyarrow's threads must not hold Python memory past the call: reading through an
    fsspec file calls back into s3fs from them, and a buffer over Python ``bytes`` is
    released by whichever thread drops it last, which takes the GIL; when that happens
    while the interpreter exits, the process aborts ("terminate called without an
    active exception", apache/arrow 33975): 3 of 60 short scripts here with
    ``pq.read_table`` over ``bytes``, and ``avfusion label`` killed by SIGABRT once in a
    CI run after writing its parts; with the copy, 0 of 300."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    owned = pa.BufferOutputStream()
    owned.write(read_bytes(url))
    return pq.ParquetFile(pa.BufferReader(owned.getvalue())).read(columns=columns)


def read_text(url: str, encoding: str = "utf-8") -> str:
    return read_bytes(url).decode(encoding)


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def read_bytes_retry(url: str, attempts: int = 4, base_delay: float = 0.5) -> bytes:
    """``read_bytes`` with retries and exponential backoff: for shards on a busy object
    store. After the last attempt the error names the URL (never a silent skip)."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            return read_bytes(url)
        except FileNotFoundError as exc:  # not transient: stop now
            raise StorageError(f"cannot read {url}: not found") from exc
        except Exception as exc:  # noqa: BLE001 - network, throttling, server errors
            last = exc
            if attempt + 1 < attempts:
                time.sleep(base_delay * 2**attempt)
    raise StorageError(
        f"cannot read {url} after {attempts} attempts: {type(last).__name__}: {last}"
    ) from last


def read_many(urls: list[str], chunk: int = 1000) -> Iterator[tuple[str, bytes]]:
    """(url, content) for each URL, in order. On an object store the GETs of a chunk run
    concurrently (fsspec's async ``cat``); locally files are read one by one."""
    if not urls:
        return
    if is_local(urls[0]):
        for url in urls:
            with builtins_open(local_path(url), "rb") as f:
                yield url, f.read()
        return
    fs, _ = filesystem(urls[0])
    for i in range(0, len(urls), chunk):
        part = urls[i : i + chunk]
        paths = [filesystem(u)[1] for u in part]
        got = fs.cat(paths, on_error="raise")
        for url, path in zip(part, paths, strict=True):
            yield url, got[path]


class StorageError(OSError):
    """A file could not be read or written after retries; the message names it."""


def list_files(url: str, pattern: str = "*") -> list[str]:
    """Files directly under folder ``url`` matching ``pattern`` (sorted URLs), fresh."""
    fs, path = filesystem(url)
    _fresh(fs, path)
    return sorted(_url_of(fs, p, url) for p in fs.glob(f"{path}/{pattern}"))


def find(url: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
    """Every file under folder ``url`` (recursive, sorted URLs), optionally by suffix."""
    fs, path = filesystem(url)
    _fresh(fs, path)
    found = fs.find(path)
    if suffixes:
        found = [p for p in found if p.lower().endswith(suffixes)]
    return sorted(_url_of(fs, p, url) for p in found)


def download(url: str, local_file: str) -> None:
    """Copy ``url`` to the local path ``local_file`` (a local source is copied too)."""
    if is_local(url):
        shutil.copyfile(local_path(url), local_file)
        return
    fs, path = filesystem(url)
    fs.get_file(path, local_file)


@contextlib.contextmanager
def scratch_dir(prefix: str = "avf-", parent: str | None = None) -> Iterator[str]:
    """A fresh local folder for a process's own temp files (downloads, decoder inputs),
    removed with everything in it on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir=parent, ignore_cleanup_errors=True) as tmp:
        yield tmp


def private_dir(name: str) -> str:
    """A folder of this user on this node that outlives a task (``name-UID`` in the
    system temp folder), for state the node's tasks share (the cookie jar). Open to no
    one else: a path someone else made first (a symlink, another owner, a mode open to
    others) is refused, not used."""
    path = os.path.join(tempfile.gettempdir(), f"{name}-{os.getuid()}")
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(
            f"{path} is not a private folder of this user (a link, another owner, or open to others)"
        )
    return path


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """Hold an exclusive lock on the local file ``path`` (made if missing): one holder
    at a time among this node's threads and processes."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def private_copy(url: str, name: str | None = None) -> Iterator[str]:
    """A local copy of ``url`` that no one else reads or writes, for a library that may
    rewrite the file it is given (yt-dlp saves its cookie jar on close) or runs in
    several threads at once: a local file is copied too. Removed on exit."""
    with scratch_dir(prefix="avf-copy-") as tmp:
        local = os.path.join(tmp, name or basename(url) or "file")
        download(url, local)
        yield local


@contextlib.contextmanager
def local_copy(url: str, workdir: str | None = None) -> Iterator[str]:
    """A local path with ``url``'s content for libraries that need a seekable file
    (PyAV, torch hub); a local URL is yielded as it is, a remote one is fetched into a
    temp dir removed on exit."""
    if is_local(url):
        yield local_path(url)
        return
    with scratch_dir(prefix="avf-fetch-", parent=workdir) as tmp:
        local = os.path.join(tmp, basename(url) or "file")
        download(url, local)
        yield local


# ----------------------------------------------------------------------------- writing


def makedirs(url: str) -> None:
    """Create a local folder (and parents); object stores have no folders: no-op."""
    if is_local(url):
        os.makedirs(local_path(url), exist_ok=True)


# The name ``_replace_local`` writes a file under before renaming it: ``.NAME.tmp-XXXXXXXX``.
_LOCAL_TEMP = re.compile(r"\.(.+)\.tmp-[0-9a-f]{8}")


def _replace_local(target: str, fill: Callable[[str], object]) -> None:
    """Write a local file atomically: ``fill(tmp)`` writes ``.NAME.tmp-XXXXXXXX`` beside
    ``target``, which is then renamed over it. One temp naming for every local write, so
    the resume clean-ups (``.last.pt.*``, ``.part-*``, ``*.tmp-*``) see what a kill left."""
    folder, name = os.path.split(target)
    os.makedirs(folder or ".", exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        fill(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def publish_file(local_file: str, url: str) -> None:
    """Put ``local_file``'s content at ``url`` atomically (see module docstring)."""
    if is_local(url):
        _replace_local(local_path(url), lambda tmp: shutil.copyfile(local_file, tmp))
        return
    fs, path = filesystem(url)
    fs.put_file(local_file, path)  # one PUT / multipart upload: appears whole or not at all
    fs.invalidate_cache()


def write_bytes(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` atomically."""
    if is_local(url):

        def fill(tmp: str) -> None:
            with builtins_open(tmp, "wb") as f:
                f.write(data)

        _replace_local(local_path(url), fill)
        return
    fs, path = filesystem(url)
    fs.pipe_file(path, data)
    fs.invalidate_cache()


def write_text(url: str, text: str, encoding: str = "utf-8") -> None:
    write_bytes(url, text.encode(encoding))


def write_json(url: str, data: Any, **kwargs: Any) -> None:
    kwargs.setdefault("indent", 1)
    write_text(url, json.dumps(data, **kwargs))


def append_text(url: str, text: str) -> None:
    """Append to a small log (metrics.jsonl). Object stores cannot append: the object is
    rewritten whole, which keeps every version of it complete."""
    previous = read_text(url) if exists(url) else ""
    write_text(url, previous + text)


@contextlib.contextmanager
def atomic_file(url: str, suffix: str = "") -> Iterator[str]:
    """Yield a local temp path to write (``pq.write_table``, ``savefig``, ``torch.save``);
    on clean exit its content is published to ``url`` atomically, on error nothing is."""
    fd, tmp = tempfile.mkstemp(suffix=suffix or os.path.splitext(basename(url))[1], prefix="avf-")
    os.close(fd)
    try:
        yield tmp
        publish_file(tmp, url)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_writer(url: str) -> Iterator[BinaryIO]:
    """A binary file object to stream ``url``'s content into (a local temp file: for
    content too large to hold in memory, a shard's tar); published to ``url``
    atomically on clean exit, on error nothing is."""
    with atomic_file(url) as tmp, builtins_open(tmp, "wb") as f:
        yield f


def remove(url: str, missing_ok: bool = True) -> None:
    fs, path = filesystem(url)
    try:
        fs.rm(path)
    except FileNotFoundError:
        if not missing_ok:
            raise
    fs.invalidate_cache()


class FolderNotOurs(StorageError):
    """An output folder holds files that this project did not write."""


# Output that vanishes when the process ends: never a job's output folder.
_EPHEMERAL_SCHEMES = ("memory",)


def _check_output_url(url: str) -> None:
    """``StorageError`` (one line) for an output URL that cannot name a lasting folder:
    a scheme with no bucket or host (``s3://``, ``gs:///x``), a path that is such a URL
    with its slashes stripped (``s3:``, ``s3:bucket``: it would become a local folder
    named ``s3:``), or an in-memory store (its files are lost when the process ends)."""
    kind = scheme(url)
    if kind in _EPHEMERAL_SCHEMES:
        raise StorageError(
            f"output folder {url} is in this process's memory and would be lost when it ends; "
            "use a local folder or an object store URL"
        )
    if kind and kind not in LOCAL_PROTOCOLS:
        if not str(url).split("://", 1)[1].split("/", 1)[0]:
            raise StorageError(f"output folder {url} names no bucket or host (like {kind}://bucket/folder)")
        return
    path = local_path(url)
    if not path:
        raise StorageError(f"output folder {url} names no folder")
    head = path.split("/", 1)[0]
    if ":" in head:
        prefix = head.split(":", 1)[0].lower()
        if prefix in fsspec.available_protocols() and prefix not in LOCAL_PROTOCOLS:
            raise StorageError(
                f"output folder {url} (a {prefix}:// URL?) names no bucket or host "
                f"(like {prefix}://bucket/folder); for a local folder so named, write ./{path}"
            )


def claim_folder(
    url: str,
    marker: str,
    ours: re.Pattern[str],
    force: bool = False,
    proof: re.Pattern[str] | None = None,
) -> None:
    """Make folder ``url`` a job's output before it writes anything there.

    The folder may be missing, empty, or hold ``marker`` (written by an earlier run of
    the job). A folder without the marker that was written before the marker existed
    is ours only if every name in it matches ``ours`` *and* one matches ``proof``: a
    name only the job writes (preprocess's plan record or a shard's stats, label's
    parts); generic names alone (``manifest.json``, ``00000.tar``) prove nothing.
    Anything else is refused with ``FolderNotOurs`` unless ``force``, since a job
    replaces and cleans up files by name there. An output URL that names no lasting
    folder (``s3://``, ``memory://…``) is refused always. Then ``marker`` is
    (re)written: the first write, so a folder that cannot be written (read-only, a
    file, an unreachable object store) is refused here, before any work, as one
    ``StorageError`` line naming it and the cause."""
    _check_output_url(url)
    try:
        if is_local(url) and os.path.lexists(local_path(url)) and not os.path.isdir(local_path(url)):
            raise StorageError(f"output folder {url} is a file, not a folder")
        names = list_names(url)
        if marker in names or not names:
            foreign = []
        else:
            foreign = [n for n in names if not ours.fullmatch(n)]
            if not foreign and not (proof is not None and any(proof.fullmatch(n) for n in names)):
                foreign = names  # our names, but nothing only we write: not proof it is ours
        if foreign and not force:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise FolderNotOurs(
                f"output folder {url} holds files this job did not write ({shown}); use a new or empty "
                "folder, or --force to write beside them (only names the job gives its own files are "
                "ever replaced or deleted)"
            )
        makedirs(url)
        write_text(join(url, marker), "written by avfusion: this folder's files are a job's output\n")
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - read-only, no such bucket, endpoint down: one line
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise StorageError(f"cannot write to output folder {url}: {type(exc).__name__}: {first}") from exc


def _is_file_or_link(url: str) -> bool:
    """True for a regular file or a symlink (not followed); False for a folder or
    anything else (a FIFO, a device), or when it is gone."""
    if is_local(url):
        try:
            mode = os.lstat(local_path(url)).st_mode
        except OSError:
            return False
        return stat.S_ISREG(mode) or stat.S_ISLNK(mode)
    return isfile(url)


def remove_own_leftovers(url: str, ours: re.Pattern[str]) -> list[str]:
    """Delete the local temp files (see ``_replace_local``) that a killed run left in
    folder ``url`` for files named as ``ours`` matches, and nothing else; returns them.
    Only a regular file or a symlink (unlinked, not followed) is such a temp file: a
    folder so named was not written by us and is left alone."""
    gone = []
    for name in list_names(url):
        match = _LOCAL_TEMP.fullmatch(name)
        if not (match and ours.fullmatch(match.group(1))):
            continue
        target = join(url, name)
        if not _is_file_or_link(target):
            continue
        if is_local(target):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(local_path(target))
        else:
            remove(target)
        gone.append(name)
    return gone


def upload_tree(local_dir: str, url: str) -> None:
    """Mirror the files under ``local_dir`` to folder ``url`` (each file atomically):
    for outputs a library insists on writing to a local folder (TensorBoard events)."""
    for dirpath, _, filenames in os.walk(local_dir):
        for name in filenames:
            src = os.path.join(dirpath, name)
            rel = os.path.relpath(src, local_dir).replace(os.sep, "/")
            publish_file(src, join(url, rel))


def save_torch(obj: Any, url: str) -> None:
    """``torch.save`` to ``url`` atomically (serialised in memory, written whole)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(url, buf.getvalue())


def load_torch(url: str, map_location: str = "cpu") -> Any:
    """``torch.load(weights_only=True)`` from ``url``: checkpoints never run code."""
    import torch

    return torch.load(io.BytesIO(read_bytes(url)), map_location=map_location, weights_only=True)


def arrow_filesystem(url: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path) for libraries that take one (Ray Train's
    ``storage_filesystem``), backed by the same fsspec filesystem as everything else."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = filesystem(url)
    return PyFileSystem(FSSpecHandler(fs)), path


def absolute(url: str) -> str:
    """A local path made absolute (Ray workers run elsewhere); URLs unchanged."""
    return os.path.abspath(local_path(url)) if is_local(url) else str(url)
