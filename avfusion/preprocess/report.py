"""The end of every run: manifest, failures table and the summary the user reads.

Both files are derived from all stats files on disk, so they describe the folder as it
is, resumed or not. The manifest is written last (it describes everything above) and
says whether the dataset is complete: a shard whose task failed after its retries
(``task_failed`` clips) or a tar without stats (a task that died between its upload
and its marker) leaves it incomplete, with an ``INCOMPLETE:`` line saying what to run.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

from avfusion import __version__, storage
from avfusion.preprocess.plan import TASK_FAILED
from avfusion.redact import Redactor, strip_url_secrets
from avfusion.shardstore import read_all_stats, write_failures_table, write_manifest
from shards.manifest import FAILURES, MANIFEST, Failure, ShardStats, build_manifest, latest_failures

if TYPE_CHECKING:  # the shard stage imports PyAV; planning and reporting need only the type
    from avfusion.preprocess.shard import PreprocessConfig


@dataclass(frozen=True, kw_only=True)
class PreprocessResult:
    manifest: dict
    failures: dict[str, Failure]  # each never-successful clip's latest failure, by key
    orphans: list[str]  # shards with a tar but no stats
    lost: list[str]  # keys of task_failed clips
    stopped: str | None = None  # the block kind that stopped the run (outlasted max_blocked)

    @property
    def complete(self) -> bool:
        return not self.lost and not self.orphans and not self.stopped

    @property
    def exit_code(self) -> int:
        return 3 if self.stopped else (0 if self.complete else 1)


def finish(
    root: str,
    labels: dict[str, int],
    cfg: PreprocessConfig,
    done: dict[str, ShardStats] | None = None,
    downloads: dict | None = None,
    redactor: Redactor | None = None,
) -> PreprocessResult:
    """Write ``failures.parquet`` and ``manifest.json`` and print the summary. ``done``:
    the stats already read, when nothing ran since (20,000 GETs saved at scale);
    ``downloads``: this run's governor stats (grants, blocked seconds, cooldowns).
    Every failure row passes ``redactor`` (the job's secrets) on its way into the table,
    whichever run or version recorded it."""
    done = read_all_stats(root) if done is None else done
    failures = {k: scrub(f, redactor or Redactor()) for k, f in latest_failures(done).items()}
    stats_names = {s.shard for s in done.values()}
    orphans = sorted(
        storage.basename(t)[:-4]
        for t in storage.list_files(root, "*.tar")
        if storage.basename(t)[:-4] not in stats_names
    )
    lost = sorted(f.key for f in failures.values() if f.kind == TASK_FAILED)
    manifest = build_manifest(
        {k: s for k, s in done.items() if s.tar},
        labels,
        {"clip": asdict(cfg.clip), "shard_size": cfg.shard_size},
        __version__,
    )
    result = PreprocessResult(
        manifest=manifest,
        failures=failures,
        orphans=orphans,
        lost=lost,
        stopped=(downloads or {}).get("stopped"),
    )
    manifest["complete"] = result.complete
    if downloads:
        manifest["downloads"] = downloads
    manifest["task_failed_clips"] = len(lost)
    write_failures_table(root, failures)
    write_manifest(root, manifest)  # last: it describes everything above
    print_summary(root, result, done)
    return result


def scrub(failure: Failure, redactor: Redactor) -> Failure:
    """``failure`` fit to store or show: its source without credentials or signatures,
    its message and warnings through ``redactor``."""
    return replace(
        failure,
        source=strip_url_secrets(failure.source),
        message=redactor(failure.message),
        warnings=[redactor(w) for w in failure.warnings],
    )


def print_summary(root: str, result: PreprocessResult, done: dict[str, ShardStats]) -> None:
    manifest, failures = result.manifest, result.failures
    kinds = Counter((f.kind, f.transient) for f in failures.values())
    print(f"\n{'shards':<24}{manifest['num_shards']:>10}")
    print(f"{'samples':<24}{manifest['num_samples']:>10}   {dict(manifest['by_split'])}")
    print(f"{'failed clips':<24}{len(failures):>10}")
    for (kind, transient), n in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<22}{n:>10}   {'transient: --retry-failed' if transient else 'permanent'}")
    print(f"{'bytes':<24}{sum(s.bytes for s in done.values()):>10}")
    print(f"{'task seconds':<24}{sum(s.seconds for s in done.values()):>10.1f}")
    downloads = manifest.get("downloads")
    if downloads:
        print(
            f"{'downloads/hour':<24}{downloads['downloads_per_hour']:>10.1f}   "
            f"blocked {downloads['blocked_seconds']:.0f} s, {downloads['cooldowns']} cooldowns, "
            f"{downloads['probes']} probes {downloads['blocks'] or ''}"
            + (f", {downloads['proxy_faults']} proxy faults" if downloads.get("proxy_faults") else "")
        )
        by_egress = downloads.get("grants_by_egress") or {}
        if len(by_egress) > 1:  # a pool, or nodes with addresses of their own
            shown = sorted(by_egress.items(), key=lambda kv: -kv[1])[:8]
            more = f", … {len(by_egress) - len(shown)} more" if len(by_egress) > len(shown) else ""
            print(f"  {'by egress':<22}" + ", ".join(f"{k}: {v}" for k, v in shown) + more)
    print(f"manifest: {root}/{MANIFEST}; failures: {root}/{FAILURES}")
    if result.complete or (result.stopped and not result.orphans and not result.lost):
        return  # a stopped run says so itself (the job prints the STOPPED line)
    redo = []
    if result.orphans:
        names = ", ".join(result.orphans[:3]) + (", …" if len(result.orphans) > 3 else "")
        redo.append(f"{len(result.orphans)} unfinished shards ({names}): re-run the same command")
    if result.lost:
        redo.append(
            f"{len(result.lost)} clips whose Ray task failed after its retries ({TASK_FAILED}):"
            " re-run with --retry-failed"
        )
    print("INCOMPLETE: " + "; ".join(redo), file=sys.stderr)
