"""Per-shard stats (the resume marker), the dataset manifest and the failures table.

``{shard}_stats.json`` is written after its tar is in place, so its presence means
the shard is complete; a tar without stats is an interrupted shard and is redone.
The manifest and ``failures.parquet`` are derived from all stats files at the end of
every run, so they are always consistent with what is on disk, resumed or not.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from avfusion import storage

STATS_SUFFIX = "_stats.json"
MANIFEST = "manifest.json"
FAILURES = "failures.parquet"


@dataclass(slots=True)
class Failure:
    key: str
    source: str
    kind: str
    transient: bool
    message: str
    attempts: int
    label: str | None = None
    warnings: list[str] = field(default_factory=list)  # yt-dlp's warnings for this clip


@dataclass(slots=True)
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


def write_json_atomic(url: str, data) -> None:
    storage.write_json(url, data, indent=1, sort_keys=True, default=_default)


def _default(obj):
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    raise TypeError(type(obj).__name__)


def write_stats(root: str, stats: ShardStats) -> None:
    stats.created = stats.created or datetime.now(timezone.utc).isoformat(timespec="seconds")
    stats.failures_by_kind = dict(Counter(f.kind for f in stats.failures))
    write_json_atomic(storage.join(root, f"{stats.shard}{STATS_SUFFIX}"), asdict(stats))


def read_all_stats(root: str) -> dict[str, ShardStats]:
    """Every completed shard's stats, by shard name, from a fresh listing (a cached one
    would miss shards that Ray tasks finished since; see ``avfusion.storage``). Fetched
    concurrently: an object store answers 20,000 small GETs in parallel far sooner."""
    out = {}
    for _, data in storage.read_many(storage.list_files(root, f"*{STATS_SUFFIX}")):
        stats = ShardStats.from_dict(json.loads(data))
        out[stats.shard] = stats
    return out


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


def write_failures_table(root: str, failures: dict[str, Failure]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ordered = sorted(failures.values(), key=lambda f: f.key)
    # Column by column (not asdict per row): 400,000 failures at VGGSound scale.
    columns = {name: [getattr(f, name) for f in ordered]
               for name in ("key", "source", "kind", "transient", "message", "attempts", "label")}
    schema = pa.schema([("key", pa.string()), ("source", pa.string()), ("kind", pa.string()),
                        ("transient", pa.bool_()), ("message", pa.string()), ("attempts", pa.int32()),
                        ("label", pa.string())])
    table = pa.Table.from_pydict(columns, schema=schema)
    with storage.atomic_file(storage.join(root, FAILURES)) as tmp:
        pq.write_table(table, tmp)


def build_manifest(all_stats: dict[str, ShardStats], label_map: dict[str, int], config: dict,
                   version: str) -> dict:
    shards = [{"tar": s.tar, "count": s.successes, "round": s.round, "bytes": s.bytes}
              for s in sorted(all_stats.values(), key=lambda s: s.shard)]
    by_split = Counter()
    for s in all_stats.values():
        by_split.update(s.by_split)
    return {
        "format": "avfusion-wds/1",
        "code_version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "num_samples": sum(s["count"] for s in shards),
        "num_shards": len(shards),
        "shards": shards,
        "label_map": label_map,
        "config": config,
        "by_split": dict(by_split),
    }
