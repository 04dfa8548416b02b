"""Which clips go into which shard: the first pass, its identity, and retry rounds.

The plan is deterministic (the same clip list and shard size give the same shard
names and contents), so re-running a command resumes it. ``_plan.json`` records its
digest: a different clip list or shard size in the same folder is refused rather than
mixed in. ``--shard-size`` is the most clips a shard holds; the shards are as many as
fill whole rounds of the executor's slots (``shard_count_for``), because one shard is
one task and a 44-clip job in one shard would keep one CPU of the cluster busy. The
count chosen is recorded too, so a resume on a cluster of another size keeps the plan. A
retry round (``--retry-failed``) plans the clips whose latest failure qualifies into
new ``rNN-`` shards and records that plan in ``_retryNN.json`` first, so an
interrupted round resumes with its own plan even though the failures it reads have
changed meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import math
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
    """Shards of ``size`` clips in order, the last one shorter: the layout of a plan
    recorded before shard counts were (``_plan.json`` without ``shards``)."""
    return {f"{prefix}{i // size:05d}": tasks[i : i + size] for i in range(0, len(tasks), size)}


def split_shards(tasks: list[ClipTask], count: int, prefix: str = "") -> dict[str, list[ClipTask]]:
    """``tasks`` in order into ``count`` shards whose sizes differ by at most one."""
    base, extra = divmod(len(tasks), max(1, count))
    shards, i = {}, 0
    for n in range(min(count, len(tasks))):
        size = base + (n < extra)
        shards[f"{prefix}{n:05d}"] = tasks[i : i + size]
        i += size
    return shards


def shard_count_for(clips: int, most: int, slots: int) -> int:
    """How many shards (tasks): a whole number of rounds of ``slots`` tasks at once, as
    few rounds as keep every shard within ``most`` clips, and no more shards than clips.
    So no slot idles while clips wait (44 clips on 16 slots: 16 shards of 2-3, one round;
    a fixed 100 per shard made them one task) and no round is a short tail."""
    if clips == 0:
        return 0
    slots = max(1, slots)
    rounds = math.ceil(clips / (slots * most))
    return min(clips, slots * rounds)


def plan_digest(tasks: list[ClipTask], cfg: PreprocessConfig) -> str:
    """Identity of the plan: which clips (key, window, label, split), shard size and clip
    spec. Not where they are fetched from: a mirror or proxy may change between runs."""
    h = hashlib.sha256(json.dumps([cfg.shard_size, asdict(cfg.clip)]).encode())
    for t in tasks:
        h.update(json.dumps([t.key, t.start, t.end, t.label, t.split]).encode())
    return h.hexdigest()


def label_map_of(tasks: list[ClipTask]) -> dict[str, int]:
    return {label: i for i, label in enumerate(sorted({t.label for t in tasks if t.label is not None}))}


def check_plan(
    root: str, tasks: list[ClipTask], cfg: PreprocessConfig, slots: Slots = lambda: 1
) -> dict[str, list[ClipTask]]:
    """The shards of the folder's plan: a new folder's sized for ``slots()`` and recorded
    (the count, so a resume on a cluster of another size keeps them); a resume's read
    back; ``PlanMismatch`` for a folder that holds another plan."""
    plan_path = storage.join(root, PLAN)
    digest = plan_digest(tasks, cfg)
    if storage.exists(plan_path):
        plan = storage.read_json(plan_path)
        if plan["digest"] != digest:
            raise PlanMismatch(
                f"{root} holds shards of a different clip list or shard size; "
                "use a new --out, or the same arguments to resume"
            )
        if "shards" not in plan:  # recorded before shard counts: fixed-size shards
            return plan_shards(tasks, int(plan["shard_size"]))
        return split_shards(tasks, int(plan["shards"]))
    count = shard_count_for(len(tasks), cfg.shard_size, slots()) if tasks else 0
    write_json(
        plan_path, {"digest": digest, "clips": len(tasks), "shard_size": cfg.shard_size, "shards": count}
    )
    return split_shards(tasks, count)


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
    ``include_permanent``), in shards sized for ``slots()`` (asked only when there are any)."""
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
    count = shard_count_for(len(chosen), cfg.shard_size, slots()) if chosen else 0
    shards = split_shards(chosen, count, prefix=f"r{round_:02d}-")
    write_json(
        storage.join(root, f"_retry{round_:02d}.json"),
        {"round": round_, "shards": {n: [t.key for t in ts] for n, ts in shards.items()}},
    )
    return shards, round_
