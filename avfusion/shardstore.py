"""A shard folder's bookkeeping files, read and written through ``avfusion.storage``.

The format (file names, records, the manifest and failures built from stats) is
``shards.manifest``; this module is where those files meet the disk or the object
store: per-shard stats, the manifest, the failures table, and the plan records
preprocess keeps beside them.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, is_dataclass
from typing import Any

from avfusion import storage
from avfusion.sources import display_path
from shards.manifest import FAILURES, MANIFEST, STATS_SUFFIX, Failure, ShardStats, failure_columns, stats_name

# The folder's own marker (see ``storage.claim_folder``) and every name preprocess gives
# a file there: a shard's tar and stats (``00000``, a retry round's ``r01-00000``, the
# ``missing`` rows of a folder input), the manifest, the failures table, the plan
# records. Only files so named are ever replaced or cleaned up.
MARKER = ".avfusion-shards"
OUR_NAMES = re.compile(
    r"(?:r\d{2}-)?\d{5}(?:\.tar|_stats\.json)|missing_stats\.json|manifest\.json|failures\.parquet"
    r"|_plan\.json|_retry\d{2}\.json|" + re.escape(MARKER)
)
# What only preprocess writes, proof that a folder without the marker (written before
# the marker existed) is a shard folder: the plan record (``preprocess.plan.PLAN``) or
# a shard's stats. ``manifest.json`` or ``00000.tar`` alone could be anyone's.
PROOF = re.compile(r"_plan\.json|(?:r\d{2}-)?\d{5}_stats\.json")


def claim(root: str, force: bool = False) -> None:
    """Make ``root`` this preprocess run's folder (refused if it holds files we did not
    write, unless ``force``), then delete the temp files a killed run left for our names."""
    storage.claim_folder(root, MARKER, OUR_NAMES, force, proof=PROOF)
    storage.remove_own_leftovers(root, OUR_NAMES)


def write_json(url: str, data: Any) -> None:
    """Atomically, keys sorted, dataclasses as dicts: the folder's JSON files diff cleanly."""
    storage.write_json(url, data, indent=1, sort_keys=True, default=_default)


def _default(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    raise TypeError(type(obj).__name__)


def write_stats(root: str, stats: ShardStats) -> None:
    """The shard's marker: call it only once its tar is in place."""
    write_json(storage.join(root, stats_name(stats.shard)), stats.to_dict())


def read_stats(root: str, shard: str) -> ShardStats:
    return ShardStats.from_dict(storage.read_json(storage.join(root, stats_name(shard))))


def read_all_stats(root: str) -> dict[str, ShardStats]:
    """Every completed shard's stats, by shard name, from a fresh listing (a cached one
    would miss shards that Ray tasks finished since; see ``avfusion.storage``). Fetched
    concurrently: an object store answers 20,000 small GETs in parallel far sooner."""
    out = {}
    for _, data in storage.read_many(storage.list_files(root, f"*{STATS_SUFFIX}")):
        stats = ShardStats.from_dict(json.loads(data))
        out[stats.shard] = stats
    return out


def write_failures_table(root: str, failures: dict[str, Failure]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("key", pa.string()),
            ("source", pa.string()),
            ("kind", pa.string()),
            ("transient", pa.bool_()),
            ("message", pa.string()),
            ("attempts", pa.int32()),
            ("label", pa.string()),
        ]
    )
    columns = failure_columns(failures)
    for name in ("key", "source", "message", "label"):  # JSON kept a non-UTF-8 name; Parquet cannot
        columns[name] = [v if v is None else display_path(v) for v in columns[name]]
    table = pa.Table.from_pydict(columns, schema=schema)
    with storage.atomic_file(storage.join(root, FAILURES)) as tmp:
        pq.write_table(table, tmp)


def write_manifest(root: str, manifest: dict) -> None:
    """Last of a run's writes: the manifest describes everything above it."""
    write_json(storage.join(root, MANIFEST), manifest)


def read_manifest(root: str) -> dict:
    return storage.read_json(storage.join(root, MANIFEST))
