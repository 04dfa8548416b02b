"""Which clips go into which shard: the first pass, its identity, and retry rounds.

The plan is deterministic (the same clip list and shard size give the same shard
names and contents), so re-running a command resumes it. ``_plan.json`` records its
digest: a different clip list or shard size in the same folder is refused rather than
mixed in. ``--shard-size`` is the most clips a shard holds; a job with fewer clips
than shards × slots gets smaller shards (``shard_size_for``), because one shard is one
task and a 44-clip job in one shard would keep one CPU of the cluster busy. The size
chosen is recorded too, so a resume on a cluster of another size keeps the plan. A
retry round (``--retry-failed``) plans the clips whose latest failure qualifies into
new ``rNN-`` shards and records that plan in ``_retryNN.json`` first, so an
interrupted round resumes with its own plan even though the failures it reads have
changed meanwhile.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING

from avfusion import storage
from avfusion.shardstore import write_json
from avfusion.sources import ClipTask
from shards.manifest import ShardStats, latest_failures

if TYPE_CHECKING:  # the shard stage imports PyAV; planning and reporting need only the type
    from avfusion.preprocess.shard import PreprocessConfig

PLAN = "_plan.json"
# How many tasks the executor runs at once, asked only when a new plan is made: on Ray
# the answer needs a session, which a finished job's resume never starts.
Slots = Callable[[], int]
TASK_FAILED = "task_failed"  # the failure kind of every clip of a shard whose task itself failed


class PlanMismatch(Exception):
    """The output folder holds shards of another plan."""


def plan_shards(tasks: list[ClipTask], size: int, prefix: str = "") -> dict[str, list[ClipTask]]:
    return {f"{prefix}{i // size:05d}": tasks[i : i + size] for i in range(0, len(tasks), size)}


def shard_size_for(clips: int, most: int, slots: int) -> int:
    """Clips per shard: at most ``most``, and small enough that ``clips`` make at least
    one task for each of the ``slots`` the executor runs at once (when there are that
    many clips): more, shorter tasks also even out clips that download slowly."""
    return max(1, min(most, clips // max(1, slots)))


def plan_digest(tasks: list[ClipTask], cfg: PreprocessConfig) -> str:
    """Identity of the plan: which clips (key, window, label, split), shard size and clip
    spec. Not where they are fetched from: a mirror or proxy may change between runs."""
    h = hashlib.sha256(json.dumps([cfg.shard_size, asdict(cfg.clip)]).encode())
    for t in tasks:
        h.update(json.dumps([t.key, t.start, t.end, t.label, t.split]).encode())
    return h.hexdigest()


def label_map_of(tasks: list[ClipTask]) -> dict[str, int]:
    return {label: i for i, label in enumerate(sorted({t.label for t in tasks if t.label is not None}))}


def recorded_plan(root: str, tasks: list[ClipTask], cfg: PreprocessConfig) -> int | None:
    """The shard size the folder's plan uses, or None for a new folder; ``PlanMismatch``
    for a folder that holds another plan."""
    plan_path = storage.join(root, PLAN)
    if not storage.exists(plan_path):
        return None
    plan = storage.read_json(plan_path)
    if plan["digest"] != plan_digest(tasks, cfg):
        raise PlanMismatch(
            f"{root} holds shards of a different clip list or shard size; "
            "use a new --out, or the same arguments to resume"
        )
    return int(plan["shard_size"])


def record_plan(root: str, tasks: list[ClipTask], cfg: PreprocessConfig, size: int) -> None:
    write_json(
        storage.join(root, PLAN), {"digest": plan_digest(tasks, cfg), "clips": len(tasks), "shard_size": size}
    )


def check_plan(root: str, tasks: list[ClipTask], cfg: PreprocessConfig, slots: Slots = lambda: 1) -> int:
    """The shard size of the folder's plan: recorded in a new folder (sized for
    ``slots()``), read back on a resume; ``PlanMismatch`` for another plan's folder."""
    size = recorded_plan(root, tasks, cfg)
    if size is None:
        size = shard_size_for(len(tasks), cfg.shard_size, slots())
        record_plan(root, tasks, cfg, size)
    return size


def retry_plan(
    root: str,
    tasks: list[ClipTask],
    done: dict[str, ShardStats],
    cfg: PreprocessConfig,
    include_permanent: bool,
    slots: Slots = lambda: 1,
) -> tuple[dict[str, list[ClipTask]], int]:
    """(shards, round) for a retry round: the unfinished last round if there is one,
    else a new round of the clips whose latest failure is transient (or any, with
    ``include_permanent``), in shards sized for ``slots()``."""
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
    shards = plan_shards(
        chosen, shard_size_for(len(chosen), cfg.shard_size, slots()), prefix=f"r{round_:02d}-"
    )
    write_json(
        storage.join(root, f"_retry{round_:02d}.json"),
        {"round": round_, "shards": {n: [t.key for t in ts] for n, ts in shards.items()}},
    )
    return shards, round_
