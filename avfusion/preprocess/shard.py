"""The preprocess stages wired in one place: task → fetch → decode → encode → shard.

``process_shard`` is what one executor task runs (``avfusion.preprocess.run`` hands
shards to an ``avfusion.executor.Executor``); it holds no Ray code, so it runs and is
tested in-process too. Every clip ends as a
sample in the tar or as a classified ``Failure`` in the shard's stats; nothing is
dropped, and the tar appears under its final name only when complete.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from avfusion import __version__, storage
from avfusion.config import ClipSpec, bounded, check_bounds
from avfusion.decode import DecodeLimits, decode_clip
from avfusion.download import DownloadConfig, DownloadError, download_section, egress_pool
from avfusion.governor import GovernorClient, SourceBlocked, wait_for_turn
from avfusion.probe import MediaError
from avfusion.redact import Redactor, strip_url_secrets
from avfusion.shardstore import write_stats
from avfusion.sources import ClipTask
from shards.manifest import Failure, ShardStats
from shards.writer import Sample, encode_sample, write_tar


@dataclass(frozen=True)
class PreprocessConfig:
    clip: ClipSpec = field(default_factory=ClipSpec)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    limits: DecodeLimits = field(default_factory=DecodeLimits)
    shard_size: int = bounded(100, ge=1, le=100_000)
    # clips in flight inside one Ray task (downloads overlap)
    threads_per_task: int = bounded(4, ge=1, le=1024)

    def __post_init__(self) -> None:
        check_bounds(self, "preprocess")


def process_clip(
    task: ClipTask,
    cfg: PreprocessConfig,
    label_map: dict[str, int],
    workdir: Path,
    governor: GovernorClient | None = None,
    redactor: Redactor | None = None,
) -> Sample | Failure:
    """One clip through fetch → decode → encode; any failure comes back classified.
    ``SourceBlocked`` (the governor stops the job) is not a clip's failure: it passes.
    What is stored of the clip (its sample's ``source``, a failure's source, message and
    warnings) has the URL's credentials and signatures removed and passes ``redactor``,
    the job's one filter that knows its secrets (proxy password, cookie values, …)."""
    redact = redactor or Redactor()
    attempts = 1
    try:
        if task.is_remote:
            sleep = _governed_sleep(governor, cfg.download) if governor is not None else time.sleep
            path, attempts, _ = download_section(
                task, cfg.clip, cfg.download, workdir, sleep=sleep, governor=governor
            )
            start = 0.0
        elif task.in_storage:  # s3://…: fetched whole into this clip's workdir, decoded locally
            path, start = _fetch(task, workdir), task.start
        else:  # decode_clip refuses what is not a readable regular file before opening it
            path, start = Path(task.source), task.start
        clip = decode_clip(path, cfg.clip, start=start, limits=cfg.limits)
    except DownloadError as exc:
        return _failure(
            task, redact, exc.kind, exc.transient, exc.message, exc.attempts, warnings=exc.warnings
        )
    except SourceBlocked:
        raise
    except MediaError as exc:
        return _failure(task, redact, exc.kind, False, exc.message, attempts)
    except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen input: record it, keep the job alive
        message = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        return _failure(task, redact, "internal_error", True, message, attempts)
    meta = {
        "key": task.key,
        "source": strip_url_secrets(task.source),
        "window_start": task.start,
        "label": task.label,
        "split": task.split,
        "quality": clip.quality.to_dict(),
        "clip": asdict(cfg.clip),
        "attempts": attempts,
        "version": __version__,
    }
    class_index = label_map.get(task.label, -1) if task.label is not None else -1
    return encode_sample(task.key, clip.waveform, clip.frames, class_index, meta, cfg.clip.sample_rate)


def _failure(
    task: ClipTask,
    redact: Callable[[str], str],
    kind: str,
    transient: bool,
    message: str,
    attempts: int,
    warnings: list[str] | None = None,
) -> Failure:
    return Failure(
        key=task.key,
        source=strip_url_secrets(task.source),
        kind=kind,
        transient=transient,
        message=redact(message),
        attempts=attempts,
        label=task.label,
        warnings=[redact(w) for w in warnings or ()],
    )


def _governed_sleep(
    governor: GovernorClient, download: DownloadConfig, step: float = 1.0
) -> Callable[[float], None]:
    """``time.sleep`` for a download's waits (its backoff between transient attempts,
    its turns), cut short by the governor's stop: a backoff of up to a minute must not
    outlive ``max_blocked``. On a stop, ``wait_for_turn`` raises ``SourceBlocked`` (a
    stopped governor grants nothing, so asking it costs no budget)."""

    def sleep(seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(step, left))
            if governor.stop_kind():
                wait_for_turn(governor, list(egress_pool(download)))

    return sleep


def _fetch(task: ClipTask, workdir: Path) -> Path:
    """Copy an object-store clip into ``workdir`` (PyAV needs a seekable local file);
    a missing object is a permanent ``missing_file``, anything else is left to raise
    (classified as a transient ``internal_error`` by the caller: retried next run)."""
    if not storage.isfile(task.source):
        raise MediaError("missing_file", f"{task.source} is missing")
    local = workdir / (storage.basename(task.source) or "clip")
    storage.download(task.source, str(local))
    return local


def process_shard(
    shard: str,
    tasks: list[ClipTask],
    cfg: PreprocessConfig,
    label_map: dict[str, int],
    out_url: str,
    round_: int = 0,
    governor: GovernorClient | None = None,
    redactor: Redactor | None = None,
) -> ShardStats:
    """Produce ``{shard}.tar`` and then ``{shard}_stats.json`` under ``out_url``.
    Downloads go through ``governor`` (``avfusion.governor``) when given, each on an
    egress address of ``cfg.download`` (``avfusion.download.egress_pool``: a block is of
    the address, which every task on it shares); ``SourceBlocked`` ends the shard
    without its stats, so a re-run redoes it."""
    t0 = time.time()
    root = out_url.rstrip("/")
    keys: list[str] = []
    failures: list[Failure] = []
    by_class: dict[str, Counter] = {}
    by_split: Counter = Counter()
    with storage.scratch_dir(prefix=f"avf-{shard}-") as tmp:

        def run(item: tuple[int, ClipTask]) -> tuple[ClipTask, Sample | Failure]:
            i, task = item
            with storage.scratch_dir(prefix=f"clip{i}-", parent=tmp) as workdir:  # downloads end with it
                return task, process_clip(task, cfg, label_map, Path(workdir), governor, redactor)

        def samples() -> Iterator[Sample]:
            with ThreadPoolExecutor(max_workers=cfg.threads_per_task) as pool:
                for task, result in pool.map(run, enumerate(tasks)):
                    counts = by_class.setdefault(task.label or "", Counter())
                    if isinstance(result, Failure):
                        failures.append(result)
                        counts["failed"] += 1
                        continue
                    keys.append(task.key)
                    counts["ok"] += 1
                    by_split[task.split or ""] += 1
                    yield result

        with storage.atomic_writer(storage.join(root, f"{shard}.tar")) as tar:
            size = write_tar(tar, samples())
    stats = ShardStats(
        shard=shard,
        tar=f"{shard}.tar",
        attempted=len(tasks),
        successes=len(keys),
        failed=len(failures),
        bytes=size,
        seconds=round(time.time() - t0, 3),
        round=round_,
        keys=keys,
        failures=failures,
        by_class={k: dict(v) for k, v in by_class.items()},
        by_split=dict(by_split),
    )
    write_stats(root, stats)  # the marker, written after the tar is in place
    return stats
