"""The node's cookie jar: cookies a host rotates are kept for the next download.

yt-dlp reads its cookies file when a ``YoutubeDL`` opens and writes its jar back when
it closes. The user's file may be a read-only mount (a Kubernetes Secret) and is read by
every thread and task, so each attempt works on a private copy. Without more, a cookie
the host set or rotated during a download (YouTube rotates an account's session
cookies, ``__Secure-*PSIDTS``, as a browser tab would) was thrown away with the copy,
and the next download sent the stale value until YouTube said the cookies are no longer
valid.

So each node keeps one writable jar per cookies file, in a private folder
(``storage.private_dir``), seeded from the file's sanitised text: an attempt's private
copy starts from the jar, and what the attempt's ``YoutubeDL`` wrote back is merged into
it (a three-way merge per cookie under a lock, so attempts running at once keep each
other's rotations). The jar is keyed by the file's content: a re-exported file starts a
fresh jar, and the user's file is never written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator

from avfusion import storage

HEADER = "# Netscape HTTP Cookie File\n"
Key = tuple[str, str, str]  # (domain, path, name): what a Set-Cookie replaces


def parse(text: str) -> dict[Key, str]:
    """The cookie lines of a Netscape cookies.txt (``#HttpOnly_`` ones included) by
    (domain, path, name); comments and malformed lines are not cookies."""
    cookies = {}
    for line in text.splitlines():
        if not line.strip() or (line.startswith("#") and not line.startswith("#HttpOnly_")):
            continue
        fields = line.split("\t")
        if len(fields) == 7:
            cookies[(fields[0].removeprefix("#HttpOnly_"), fields[2], fields[5])] = line
    return cookies


def jar_path(source: str, seed: str) -> str:
    """Where this node keeps the jar of cookies file ``source`` with content ``seed``."""
    digest = hashlib.sha256(f"{source}\0{seed}".encode()).hexdigest()[:20]
    return os.path.join(storage.private_dir("avfusion-cookies"), f"{digest}.txt")


def values(source: str, seed: str) -> list[str]:
    """Every cookie value in this node's jar for ``source``: the values the host set
    since the file was exported (the redaction filter must know them too)."""
    path = jar_path(source, seed)
    if not storage.exists(path):
        return []
    return [line.split("\t")[6] for line in parse(storage.read_text(path)).values()]


@contextlib.contextmanager
def attempt_copy(source: str, seed: str) -> Iterator[str]:
    """A private cookies file for one attempt, with this node's cookies for ``source``
    (seeded from ``seed``, the file's sanitised text); on exit, the cookies the attempt
    changed, added or removed are merged into the node's jar, whatever the attempt's
    outcome (a rotation is real even when the download then failed)."""
    path = jar_path(source, seed)
    with storage.locked(path + ".lock"):
        if not storage.exists(path):
            storage.write_text(path, seed)
        start = storage.read_text(path)
    with storage.scratch_dir(prefix="avf-cookies-") as tmp:
        copy = os.path.join(tmp, "cookies.txt")
        storage.write_text(copy, start)
        try:
            yield copy
        finally:
            end = storage.read_text(copy) if storage.exists(copy) else start
            _merge(path, parse(start), parse(end))


def _merge(path: str, start: dict[Key, str], end: dict[Key, str]) -> None:
    changed = {k: line for k, line in end.items() if start.get(k) != line}
    removed = start.keys() - end.keys()
    if not changed and not removed:
        return
    with storage.locked(path + ".lock"):
        current = parse(storage.read_text(path))
        for key in removed:
            current.pop(key, None)
        current.update(changed)
        storage.write_text(path, HEADER + "".join(f"{line}\n" for line in current.values()))
