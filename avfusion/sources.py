"""Where clips come from: VGGSound-format CSVs (more sources arrive with preprocess).

VGGSound's CSV has no header; rows are ``youtube_id,start_seconds,label,split``.
Ids may start with ``-`` and contain ``_``; labels may contain quoted commas.
A clip's key is ``{youtube_id}_{start:06d}``, which is also how downloaded clips
are usually named on disk.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "test", "val")


class SourceError(ValueError):
    """A clip list is malformed; the message names the file and line."""


@dataclass(frozen=True)
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


def read_vggsound_csv(path: str | Path) -> list[ClipRow]:
    """All rows of a VGGSound-format CSV; blank lines skipped, anything else malformed
    raises ``SourceError`` with its line number (a silent skip would lose clips)."""
    rows: list[ClipRow] = []
    seen: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, fields in enumerate(csv.reader(f, skipinitialspace=False), start=1):
            if not fields or all(not x.strip() for x in fields):
                continue
            if len(fields) != 4:
                raise SourceError(f"{path}:{lineno}: expected 4 fields (id,start,label,split), got {len(fields)}: {fields}")
            youtube_id, start, label, split = (x.strip() for x in fields)
            try:
                start_s = int(float(start))
            except ValueError:
                raise SourceError(f"{path}:{lineno}: start {start!r} is not a number of seconds") from None
            if not youtube_id or not label or start_s < 0:
                raise SourceError(f"{path}:{lineno}: empty id/label or negative start: {fields}")
            if split not in SPLITS:
                raise SourceError(f"{path}:{lineno}: split {split!r} not one of {SPLITS}")
            row = ClipRow(youtube_id, start_s, label, split)
            if row.key in seen:
                raise SourceError(f"{path}:{lineno}: duplicate clip {row.key} (first on line {seen[row.key]})")
            seen[row.key] = lineno
            rows.append(row)
    return rows


def label_map(rows: list[ClipRow]) -> dict[str, int]:
    """Labels sorted by name → class index: stable across runs and machines."""
    return {label: i for i, label in enumerate(sorted({r.label for r in rows}))}
