"""The preprocess run, wired in one place: read the input, plan, resume, run the
shards through an executor, record what failed, finish.

``run_preprocess(job, executor)`` is what ``avfusion preprocess`` calls; the executor
decides where shards run (``InProcessExecutor`` here, ``RayExecutor`` on a cluster)
and is entered only to size a new plan or when a shard is left to do, so a finished
run starts no Ray.
Every clip ends accounted for: a sample, a classified failure from ``process_shard``,
or, when a shard's task itself failed after its retries, a transient ``task_failed``
row that ``--retry-failed`` redoes.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from functools import partial

from avfusion import storage
from avfusion.config import bounded, check_bounds
from avfusion.executor import Executor
from avfusion.governor import Governor, GovernorClient, GovernorConfig, SourceBlocked
from avfusion.preprocess.plan import (
    TASK_FAILED,
    PlanMismatch,
    check_plan,
    label_map_of,
    retry_plan,
)
from avfusion.preprocess.report import PreprocessResult, finish
from avfusion.preprocess.shard import PreprocessConfig, process_shard
from avfusion.redact import Redactor, strip_url_secrets
from avfusion.shardstore import claim, read_all_stats, write_stats
from avfusion.sources import (
    ClipTask,
    SourceError,
    filter_tasks,
    read_url_list,
    read_vggsound_csv,
    scan_folder,
    tasks_from_vggsound,
)
from shards.manifest import Failure, ShardStats

INPUT_KINDS = ("auto", "vggsound", "urls", "folder")


class PreprocessError(Exception):
    """The run cannot start: unreadable input, or an output folder of another plan."""


@dataclass(frozen=True)
class PreprocessJob:
    """What to preprocess and where to; how each clip is processed is ``config``."""

    input: str  # VGGSound CSV, URL list (.csv with a url header / .parquet) or a folder of videos
    out: str  # shard folder URL
    config: PreprocessConfig = field(default_factory=PreprocessConfig)
    input_kind: str = "auto"
    labels: str | None = None  # VGGSound-format CSV labelling a folder's files
    labels_from_dirs: bool = False
    splits: tuple[str, ...] = ()  # keep only these (empty: all)
    keep_labels: tuple[str, ...] = ()
    limit: int | None = bounded(None, ge=0)  # keep the first N clips after filtering
    retry_failed: bool = False
    retry_all_failures: bool = False
    task_retries: int = bounded(3, ge=0, le=100)  # executor re-runs of a shard whose worker died
    governor: GovernorConfig = field(default_factory=GovernorConfig)  # the download budget and block handling
    allow_no_solver: bool = False  # download from YouTube without a JS runtime + challenge solver
    # Secrets the job holds beyond its config (the AWS secret key the entry point read
    # from the environment): masked wherever the job's text is recorded or printed.
    secrets: tuple[str, ...] = ()
    force: bool = False  # write into an --out that holds files we did not write
    allow_local_paths: bool = False  # a URL list may name local files (read from the worker's disk)

    def __post_init__(self) -> None:
        check_bounds(self, "preprocess")


def job_redactor(job: PreprocessJob) -> Redactor:
    """The job's one redaction filter: its download settings' secrets (cookie values, the
    proxy's password) and ``job.secrets``, on top of ``redact``'s secret-shaped patterns."""
    from avfusion.download import download_redactor

    return download_redactor(job.config.download, *job.secrets)


def input_kind(path: str) -> str:
    if storage.isdir(path):
        return "folder"
    if path.endswith(".parquet") or _has_url_header(path):
        return "urls"
    return "vggsound"


def _has_url_header(path: str) -> bool:
    with storage.open(path, "r", encoding="utf-8", errors="replace") as f:
        return "url" in [c.strip().lower() for c in f.readline().split(",")]


def read_tasks(job: PreprocessJob) -> tuple[list[ClipTask], list[Failure]]:
    """The clip tasks, plus failures for CSV rows whose file is missing from a folder."""
    if storage.is_local(job.input):  # a FIFO or /dev/zero as the clip list would never end
        found = storage.local_kind(storage.local_path(job.input))
        if found not in ("file", "dir"):
            raise PreprocessError(f"input {job.input} is not a file or folder ({found})")
    kind = input_kind(job.input) if job.input_kind == "auto" else job.input_kind
    if kind != "folder" and (job.labels or job.labels_from_dirs):
        flag = "--labels" if job.labels else "--labels-from-dirs"
        raise PreprocessError(f"{flag} labels a folder's files; the input {job.input} is a {kind} list")
    missing: list[Failure] = []
    if kind == "folder":
        tasks, rows = scan_folder(job.input, job.labels, job.labels_from_dirs)
        missing = [
            Failure(
                key=r.key,
                source=strip_url_secrets(job.input),
                kind="missing_file",
                transient=False,
                message=f"no file named {r.key}.* or {r.youtube_id}.*",
                attempts=0,
                label=r.label,
            )
            for r in rows
        ]
    elif kind == "urls":
        tasks = read_url_list(job.input, job.allow_local_paths)
    else:
        rows = read_vggsound_csv(job.input)
        tasks = tasks_from_vggsound(rows, job.config.download.url_template, job.allow_local_paths)
    tasks = filter_tasks(tasks, list(job.splits) or None, list(job.keep_labels) or None, job.limit)
    keep = {t.key for t in tasks}
    return tasks, [f for f in missing if (not job.splits and not job.keep_labels) or f.key in keep]


def run_preprocess(
    job: PreprocessJob, executor: Executor, redactor: Redactor | None = None
) -> PreprocessResult:
    """Resume or start the run ``job`` describes; ``PreprocessError`` if it cannot start.
    ``redactor``: the job's filter (default ``job_redactor(job)``), applied to every
    failure message recorded and every error line printed."""
    redactor = redactor or job_redactor(job)
    try:
        tasks, missing = read_tasks(job)
    except (SourceError, OSError) as exc:
        raise PreprocessError(redactor(str(exc))) from exc
    refused = check_downloads(job, tasks)
    if refused:
        raise PreprocessError(refused)
    root, cfg = job.out.rstrip("/"), job.config
    try:
        claim(root, job.force)
    except OSError as exc:
        raise PreprocessError(str(exc)) from exc
    labels = label_map_of(tasks)
    with contextlib.ExitStack() as session:
        # The executor starts (Ray: a session) only for a new plan, to size its shards to
        # the slots it has, or for shards left to run; a finished job's resume starts none.
        started: list[Executor] = []

        def slots() -> int:
            if not started:
                started.append(session.enter_context(executor))
            return executor.slots()

        try:
            first = check_plan(root, tasks, cfg, slots)
        except PlanMismatch as exc:
            raise PreprocessError(str(exc)) from exc
        done = read_all_stats(root)
        if job.retry_failed:
            shards, round_ = retry_plan(root, tasks, done, cfg, job.retry_all_failures, slots)
        else:
            shards, round_ = first, 0
            if missing and "missing" not in done:
                write_stats(
                    root,
                    ShardStats(
                        shard="missing",
                        tar="",
                        attempted=len(missing),
                        successes=0,
                        failed=len(missing),
                        bytes=0,
                        seconds=0.0,
                        round=0,
                        keys=[],
                        failures=missing,
                    ),
                )
        todo = {name: ts for name, ts in shards.items() if name not in done}
        print(
            f"{len(tasks)} clips, {len(shards)} shards ({len(shards) - len(todo)} already done), "
            f"{len(labels)} labels → {job.out}"
        )
        downloads = None
        if todo:
            slots()
            downloads = run_shards(
                executor, todo, cfg, labels, root, round_, job.task_retries, job.governor, redactor
            )
    # Nothing ran: the stats just read are still all there is.
    return finish(root, labels, cfg, None if todo else done, downloads, redactor)


def check_downloads(job: PreprocessJob, tasks: list[ClipTask]) -> str | None:
    """Before any download: options that would not take effect (``preflight``), and the
    JS runtime and challenge solver YouTube needs (printed). Returns the refusal, or None."""
    from avfusion.download import COOKIES_MAX_BYTES, js_runtime_report, preflight, sanitise_cookies

    if not any(t.is_remote for t in tasks):
        return None
    errors = preflight(job.config.download)
    if errors:
        return errors[0]
    if job.config.download.cookies:
        # Once per job, here; each attempt's private copy drops these lines silently.
        try:  # a FIFO or /dev/zero here would hang every download's private copy
            text = storage.read_small(job.config.download.cookies, COOKIES_MAX_BYTES, "cookies file")
        except OSError as exc:
            return str(exc)
        for dropped in sanitise_cookies(text.decode("utf-8", "replace"))[1]:
            print(f"warning: {dropped}")
    js = js_runtime_report(job.config.download.js_runtimes)
    print(
        f"yt-dlp {js['yt_dlp']}: JS runtime {js['runtime'] or 'none'}"
        f"{'' if js['supported'] else ' (unsupported)'}, "
        f"challenge solver {js['solver'] or 'none'}"
    )
    youtube = any(re.search(r"(^|[./])(youtube\.com|youtu\.be)/", t.source) for t in tasks)
    if youtube and not js["ok"] and not job.allow_no_solver:
        return (
            "YouTube needs a JS runtime and the challenge solver: pip install 'yt-dlp[default,deno]' "
            "into this environment (or pass --allow-no-solver to download what yt-dlp can without "
            "them)"
        )
    return None


def run_shards(
    executor: Executor,
    todo: dict[str, list[ClipTask]],
    cfg: PreprocessConfig,
    labels: dict[str, int],
    root: str,
    round_: int,
    retries: int,
    governor_cfg: GovernorConfig | None = None,
    redactor: Redactor | None = None,
) -> dict | None:
    """Every shard of ``todo`` through the executor, a progress bar over its clips; a
    shard whose task failed gets its ``task_failed`` stats here. Downloads share one
    governor (a named actor on Ray); its stats come back, ``stopped`` naming the block
    when one outlasted ``max_blocked`` (no further shard is started; the blocked ones
    wrote no stats, so a re-run redoes them)."""
    from tqdm import tqdm

    remote = any(t.is_remote for ts in todo.values() for t in ts)  # nothing to download: no governor
    governor = executor.shared("avfusion-download-governor", Governor, governor_cfg) if remote else None
    fn = partial(
        process_shard_item,
        cfg=cfg,
        label_map=labels,
        out_url=root,
        round_=round_,
        governor=governor,
        redactor=redactor,
    )
    with tqdm(total=sum(len(t) for t in todo.values()), desc="preprocess", unit="clip") as bar:
        for (name, tasks), result in executor.map_unordered(fn, list(todo.items()), retries=retries):
            if _is_blocked(result):
                break
            if isinstance(result, BaseException):
                record_task_failure(root, name, tasks, round_, result, redactor)
                tqdm.write(
                    f"shard {name} failed after its task's retries ({type(result).__name__}); "
                    f"its {len(tasks)} clips are recorded as {TASK_FAILED}"
                )
            else:
                bar.set_postfix(failed=result.failed, refresh=False)
            bar.update(len(tasks))
    return governor.stats() if governor is not None else None


def _is_blocked(result: object) -> bool:
    """The governor stopped the job (in-process, or behind a Ray task error)."""
    return isinstance(result, SourceBlocked) or isinstance(getattr(result, "cause", None), SourceBlocked)


def process_shard_item(
    item: tuple[str, list[ClipTask]],
    *,
    cfg: PreprocessConfig,
    label_map: dict[str, int],
    out_url: str,
    round_: int,
    governor: GovernorClient | None = None,
    redactor: Redactor | None = None,
) -> ShardStats:
    """``process_shard`` for one ``(name, tasks)`` item of the executor (Ray names the
    task after it: ``ray::process_shard_item``). Idempotent, so a re-run is safe."""
    name, tasks = item
    return process_shard(name, tasks, cfg, label_map, out_url, round_, governor=governor, redactor=redactor)


def record_task_failure(
    root: str,
    shard: str,
    tasks: list[ClipTask],
    round_: int,
    exc: BaseException,
    redactor: Redactor | None = None,
) -> None:
    """A shard whose task failed after its retries (worker node lost, OOM, …) still
    ends with stats: one transient ``task_failed`` row per clip and no tar, so every
    clip is accounted for and ``--retry-failed`` redoes exactly these. A tar the task
    may have uploaded before dying is left out of the manifest (its stats are these)."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    message = (redactor or Redactor())(f"{type(exc).__name__}: {first}")[:500]
    failures = [
        Failure(
            key=t.key,
            source=strip_url_secrets(t.source),
            kind=TASK_FAILED,
            transient=True,
            message=message,
            attempts=1,
            label=t.label,
        )
        for t in tasks
    ]
    by_class: dict[str, dict[str, int]] = {}
    for t in tasks:
        by_class.setdefault(t.label or "", {"failed": 0})["failed"] += 1
    write_stats(
        root,
        ShardStats(
            shard=shard,
            tar="",
            attempted=len(tasks),
            successes=0,
            failed=len(tasks),
            bytes=0,
            seconds=0.0,
            round=round_,
            keys=[],
            failures=failures,
            by_class=by_class,
        ),
    )
