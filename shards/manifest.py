"""Per-shard stats (the resume marker), the dataset manifest and the failures table.

``{shard}_stats.json`` is written after its tar is in place, so its presence means
the shard is complete; a tar without stats is an interrupted shard and is redone.
The manifest and ``failures.parquet`` are derived from all stats files at the end of
every run, so they are always consistent with what is on disk, resumed or not.

This module is the format only: the file names, the records and their dict form, and
the manifest and failures built from stats. Reading and writing them is
``avfusion.shardstore``'s (through ``avfusion.storage``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

FORMAT = "avfusion-wds/1"
STATS_SUFFIX = "_stats.json"
MANIFEST = "manifest.json"
FAILURES = "failures.parquet"
# The failures table's columns, in order (``Failure`` less its warnings).
FAILURE_COLUMNS = ("key", "source", "kind", "transient", "message", "attempts", "label")


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    key: str
    source: str
    kind: str
    transient: bool
    message: str
    attempts: int
    label: str | None = None
    warnings: list[str] = field(default_factory=list)  # yt-dlp's warnings for this clip


@dataclass(frozen=True, slots=True, kw_only=True)
class ShardStats:
    shard: str
    tar: str
    attempted: int
    successes: int
    failed: int
    bytes: int
    seconds: float
    round: int  # 0: first pass; n: the n-th --retry-failed
    keys: list[str]
    failures: list[Failure]
    by_class: dict[str, dict[str, int]] = field(default_factory=dict)
    by_split: dict[str, int] = field(default_factory=dict)
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    created: str = ""

    @classmethod
    def from_dict(cls, data: dict) -> ShardStats:
        data = dict(data)
        data["failures"] = [Failure(**f) for f in data["failures"]]
        return cls(**data)

    def to_dict(self) -> dict:
        """The stats file's content: ``created`` now unless set, ``failures_by_kind`` counted."""
        data = asdict(self)
        data["created"] = self.created or now()
        data["failures_by_kind"] = dict(Counter(f.kind for f in self.failures))
        return data


def stats_name(shard: str) -> str:
    """The stats file of shard ``shard`` (``00000`` → ``00000_stats.json``)."""
    return f"{shard}{STATS_SUFFIX}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def latest_failures(all_stats: dict[str, ShardStats]) -> dict[str, Failure]:
    """Each clip's most recent failure, for clips that never succeeded."""
    # A clip is planned once in round 0 and retried only while it has not succeeded, so
    # only retry rounds can hold a success that overrides an earlier failure (and a
    # set of every key would cost ~200 MB at VGGSound scale).
    ok = {k for s in all_stats.values() if s.round > 0 for k in s.keys}
    last: dict[str, tuple[int, Failure]] = {}
    for s in all_stats.values():
        for f in s.failures:
            if f.key not in ok and (f.key not in last or s.round >= last[f.key][0]):
                last[f.key] = (s.round, f)
    return {k: f for k, (_, f) in last.items()}


def failure_columns(failures: dict[str, Failure]) -> dict[str, list]:
    """The failures table as columns (``FAILURE_COLUMNS``), rows sorted by key. Column by
    column, not a dict per row: 400,000 failures at VGGSound scale."""
    ordered = sorted(failures.values(), key=lambda f: f.key)
    return {name: [getattr(f, name) for f in ordered] for name in FAILURE_COLUMNS}


def build_manifest(
    all_stats: dict[str, ShardStats], label_map: dict[str, int], config: dict, version: str
) -> dict:
    shards = [
        {"tar": s.tar, "count": s.successes, "round": s.round, "bytes": s.bytes}
        for s in sorted(all_stats.values(), key=lambda s: s.shard)
    ]
    by_split: Counter[str] = Counter()
    for s in all_stats.values():
        by_split.update(s.by_split)
    return {
        "format": FORMAT,
        "code_version": version,
        "created": now(),
        "num_samples": sum(s["count"] for s in shards),
        "num_shards": len(shards),
        "shards": shards,
        "label_map": label_map,
        "config": config,
        "by_split": dict(by_split),
    }
