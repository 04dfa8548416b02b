"""Which clips go into which shard: the first pass, its identity, and retry rounds.

The plan is deterministic (the same clip list and shard size give the same shard
names and contents), so re-running a command resumes it. ``_plan.json`` records its
digest: a different clip list or shard size in the same folder is refused rather than
mixed in. A retry round (``--retry-failed``) plans the clips whose latest failure
qualifies into new ``rNN-`` shards and records that plan in ``_retryNN.json`` first,
so an interrupted round resumes with its own plan even though the failures it reads
have changed meanwhile.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from avfusion import storage
from avfusion.shardstore import write_json
from avfusion.sources import ClipTask
from shards.manifest import ShardStats, latest_failures

if TYPE_CHECKING:  # the shard stage imports PyAV; planning and reporting need only the type
    from avfusion.preprocess.shard import PreprocessConfig

PLAN = "_plan.json"
TASK_FAILED = "task_failed"  # the failure kind of every clip of a shard whose task itself failed


class PlanMismatch(Exception):
    """The output folder holds shards of another plan."""


def plan_shards(tasks: list[ClipTask], size: int, prefix: str = "") -> dict[str, list[ClipTask]]:
    return {f"{prefix}{i // size:05d}": tasks[i : i + size] for i in range(0, len(tasks), size)}


def plan_digest(tasks: list[ClipTask], cfg: PreprocessConfig) -> str:
    """Identity of the plan: which clips (key, window, label, split), shard size and clip
    spec. Not where they are fetched from: a mirror or proxy may change between runs."""
    h = hashlib.sha256(json.dumps([cfg.shard_size, asdict(cfg.clip)]).encode())
    for t in tasks:
        h.update(json.dumps([t.key, t.start, t.end, t.label, t.split]).encode())
    return h.hexdigest()


def label_map_of(tasks: list[ClipTask]) -> dict[str, int]:
    return {label: i for i, label in enumerate(sorted({t.label for t in tasks if t.label is not None}))}


def check_plan(root: str, tasks: list[ClipTask], cfg: PreprocessConfig) -> None:
    """Record the plan's digest in a new folder; refuse a folder that holds another plan."""
    digest = plan_digest(tasks, cfg)
    plan_path = storage.join(root, PLAN)
    if storage.exists(plan_path):
        if storage.read_json(plan_path)["digest"] != digest:
            raise PlanMismatch(
                f"{root} holds shards of a different clip list or shard size; "
                "use a new --out, or the same arguments to resume"
            )
    else:
        write_json(plan_path, {"digest": digest, "clips": len(tasks), "shard_size": cfg.shard_size})


def retry_plan(
    root: str,
    tasks: list[ClipTask],
    done: dict[str, ShardStats],
    cfg: PreprocessConfig,
    include_permanent: bool,
) -> tuple[dict[str, list[ClipTask]], int]:
    """(shards, round) for a retry round: the unfinished last round if there is one,
    else a new round of the clips whose latest failure is transient (or any, with
    ``include_permanent``)."""
    rounds = storage.list_files(root, "_retry*.json")
    if rounds:
        last = storage.read_json(rounds[-1])
        if any(name not in done for name in last["shards"]):
            by_key = {t.key: t for t in tasks}
            return {name: [by_key[k] for k in keys] for name, keys in last["shards"].items()}, last["round"]
    failures = latest_failures(done)
    retry = {k for k, f in failures.items() if f.transient or include_permanent}
    round_ = max([0] + [s.round for s in done.values()]) + 1
    chosen = [t for t in tasks if t.key in retry]
    shards = plan_shards(chosen, cfg.shard_size, prefix=f"r{round_:02d}-")
    write_json(
        storage.join(root, f"_retry{round_:02d}.json"),
        {"round": round_, "shards": {n: [t.key for t in ts] for n, ts in shards.items()}},
    )
    return shards, round_
