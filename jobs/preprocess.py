"""`avfusion preprocess INPUT --out SHARDS`: clips → Ray tasks → WebDataset shards.

INPUT is a VGGSound CSV (no header), a URL list (CSV with header or Parquet with a
``url`` column), or a folder of videos. Work is split deterministically into
shard-sized Ray tasks; each writes ``NNNNN.tar`` then ``NNNNN_stats.json``. Re-running
the same command skips finished shards; ``--retry-failed`` re-attempts only clips
whose last failure was transient (``--retry-all-failures``: every failure) into new
shards. The run ends with ``manifest.json``, ``failures.parquet`` and a summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import sys
from collections import Counter
from dataclasses import asdict, replace

from avfusion import __version__, storage
from avfusion.config import ClipSpec, ConfigError, load_section, load_yaml
from avfusion.decode import DecodeLimits
from avfusion.download import DownloadConfig
from avfusion.governor import Governor, GovernorConfig, SourceBlocked
from avfusion.pipeline import PreprocessConfig, process_shard
from avfusion.sources import (ClipTask, SourceError, filter_tasks, read_url_list, read_vggsound_csv, scan_folder,
                              tasks_from_vggsound)
from jobs._ray import ray_session
from shards.manifest import (MANIFEST, STATS_SUFFIX, Failure, ShardStats, build_manifest, latest_failures,
                             read_all_stats, write_failures_table, write_json_atomic, write_stats)

PLAN = "_plan.json"
TASK_FAILED = "task_failed"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avfusion preprocess", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("input", help="VGGSound CSV, URL list (.csv with header / .parquet), or a folder of videos")
    p.add_argument("--out", required=True, help="shard folder: a local path or an fsspec URL (s3://…)")
    p.add_argument("--input-kind", choices=["auto", "vggsound", "urls", "folder"], default="auto")
    src = p.add_argument_group("selection")
    src.add_argument("--labels", help="VGGSound-format CSV labelling a folder's files ({id}_{start:06d} or {id} stems)")
    src.add_argument("--labels-from-dirs", action="store_true", help="label = first sub-folder name")
    src.add_argument("--split", action="append", help="keep this split (repeatable)")
    src.add_argument("--label", action="append", help="keep this label (repeatable)")
    src.add_argument("--limit", type=int, help="keep the first N clips after filtering")
    dl = p.add_argument_group("download (passed to yt-dlp)")
    dl.add_argument("--url-template", help="URL for an id, with {id}; default the YouTube watch URL")
    dl.add_argument("--cookies", help="cookies.txt for yt-dlp (YouTube's bot check)")
    dl.add_argument("--proxy")
    dl.add_argument("--rate-limit", help="refused: ffmpeg (every section download) ignores it; use "
                    "--downloads-per-hour and --min-spacing")
    dl.add_argument("--sleep", type=float, help="seconds to sleep before each request (also the download "
                    "spacing unless --min-spacing is given)")
    dl.add_argument("--format", help="yt-dlp format selector")
    dl.add_argument("--max-attempts", type=int, help="attempts per clip for transient errors (default 4)")
    dl.add_argument("--yt-dlp-option", action="append", default=[], metavar="KEY=JSON",
                    help="any other yt-dlp option, value as JSON (repeatable)")
    run = p.add_argument_group("run")
    run.add_argument("--config", help="YAML with clip:, download:, limits:, preprocess: sections")
    run.add_argument("--frame-size", type=int, help="stored frame size in pixels (default 224)")
    run.add_argument("--shard-size", type=int, help="clips per shard / Ray task (default 100)")
    run.add_argument("--concurrency", type=int, help="Ray tasks in flight (default: cluster CPUs)")
    run.add_argument("--threads", type=int, help="clips in flight inside one task (default 4)")
    run.add_argument("--retry-failed", action="store_true", help="re-attempt clips whose last failure was transient")
    run.add_argument("--retry-all-failures", action="store_true", help="with --retry-failed: permanent ones too")
    run.add_argument("--address", help="Ray cluster address; default: embedded local Ray (or the job's cluster)")
    run.add_argument("--num-cpus", type=int, help="CPUs for the embedded Ray")
    run.add_argument("--task-retries", type=int, default=3,
                     help="Ray re-runs of a shard task whose worker died (default 3); after them its clips "
                          "are recorded as task_failed")
    run.add_argument("--verbose", action="store_true", help="show Ray's own log lines")
    # --- download governor (issue 18) ---
    gov = p.add_argument_group("download budget and blocks (one governor for the whole job)")
    gov.add_argument("--downloads-per-hour", type=float,
                     help="per node (default 300: YouTube's guest figure; the account's 2000/h caps all nodes "
                          "when --cookies is given)")
    gov.add_argument("--min-spacing", type=float, help="seconds between downloads on a node, +0-100%% jitter (default 5)")
    gov.add_argument("--max-blocked", type=float,
                     help="seconds a block may last before the job stops cleanly (default 3600; re-run to resume)")
    gov.add_argument("--allow-no-solver", action="store_true",
                     help="download from YouTube even without a JS runtime + challenge solver (formats go missing)")
    return p


def load_config(args) -> PreprocessConfig:
    sections = load_yaml(args.config) if args.config else {}
    clip = load_section(ClipSpec, args.config, "clip", frame_size=args.frame_size)
    extra = dict((sections.get("download") or {}).get("extra") or {})
    for item in args.yt_dlp_option:
        key, _, value = item.partition("=")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    download = load_section(DownloadConfig, args.config, "download", url_template=args.url_template,
                            cookies=args.cookies, proxy=args.proxy, rate_limit=args.rate_limit,
                            sleep_seconds=args.sleep, format=args.format, max_attempts=args.max_attempts,
                            extra=extra or None)
    limits = load_section(DecodeLimits, args.config, "limits")
    governor = GovernorConfig.for_cookies(bool(download.cookies), **_governor_overrides(args))
    base = load_section(PreprocessConfig, None, "preprocess")
    pre = sections.get("preprocess") or {}
    return replace(base, clip=clip, download=download, limits=limits,
                   shard_size=args.shard_size or pre.get("shard_size", base.shard_size),
                   threads_per_task=args.threads or pre.get("threads_per_task", base.threads_per_task)), governor


def _governor_overrides(args) -> dict:
    """The YAML ``governor:`` section (any ``GovernorConfig`` field), then the flags."""
    data = dict((load_yaml(args.config).get("governor") or {}) if args.config else {})
    # --sleep (yt-dlp's sleep_interval_requests skips a fresh instance's first request,
    # and every attempt is a fresh instance) also sets the governor's spacing.
    spacing = args.min_spacing if args.min_spacing is not None else args.sleep
    flags = {"per_node_per_hour": args.downloads_per_hour, "min_spacing": spacing,
             "max_blocked": args.max_blocked}
    data.update({k: v for k, v in flags.items() if v is not None})
    return data


def check_downloads(args, cfg: PreprocessConfig, tasks: list[ClipTask]) -> str | None:
    """Before any download: options that would not take effect, and the JS runtime and
    challenge solver YouTube needs (printed). Returns the error line, or None."""
    from avfusion.download import js_runtime_report, preflight

    if not any(t.is_remote for t in tasks):
        return None
    errors = preflight(cfg.download)
    if errors:
        return errors[0]
    js = js_runtime_report(cfg.download.js_runtimes)
    print(f"yt-dlp {js['yt_dlp']}: JS runtime {js['runtime'] or 'none'}"
          f"{'' if js['supported'] else ' (unsupported)'}, challenge solver {js['solver'] or 'none'}")
    youtube = any(re.search(r"(^|[./])(youtube\.com|youtu\.be)/", t.source) for t in tasks)
    if youtube and not js["ok"] and not args.allow_no_solver:
        return ("YouTube needs a JS runtime and the challenge solver: pip install 'yt-dlp[default,deno]' into "
                "this environment (or pass --allow-no-solver to download what yt-dlp can without them)")
    return None


def read_tasks(args, cfg: PreprocessConfig) -> tuple[list[ClipTask], list[Failure]]:
    """The clip tasks, plus failures for CSV rows whose file is missing from a folder."""
    path = args.input
    kind = args.input_kind
    if kind == "auto":
        if storage.isdir(path):
            kind = "folder"
        elif path.endswith(".parquet") or _has_url_header(path):
            kind = "urls"
        else:
            kind = "vggsound"
    missing: list[Failure] = []
    if kind == "folder":
        tasks, rows = scan_folder(path, args.labels, args.labels_from_dirs)
        missing = [Failure(r.key, path, "missing_file", False, f"no file named {r.key}.* or {r.youtube_id}.*",
                           0, r.label) for r in rows]
    elif kind == "urls":
        tasks = read_url_list(path)
    else:
        tasks = tasks_from_vggsound(read_vggsound_csv(path), cfg.download.url_template)
    tasks = filter_tasks(tasks, args.split, args.label, args.limit)
    keep = {t.key for t in tasks}
    return tasks, [f for f in missing if (not args.split and not args.label) or f.key in keep]


def _has_url_header(path: str) -> bool:
    with storage.open(path, "r", encoding="utf-8", errors="replace") as f:
        return "url" in [c.strip().lower() for c in f.readline().split(",")]


def plan_shards(tasks: list[ClipTask], size: int, prefix: str = "") -> dict[str, list[ClipTask]]:
    return {f"{prefix}{i // size:05d}": tasks[i:i + size] for i in range(0, len(tasks), size)}


def _digest(tasks: list[ClipTask], cfg: PreprocessConfig) -> str:
    """Identity of the plan: which clips (key, window, label, split), shard size and clip
    spec. Not where they are fetched from: a mirror or proxy may change between runs."""
    h = hashlib.sha256(json.dumps([cfg.shard_size, asdict(cfg.clip)]).encode())
    for t in tasks:
        h.update(json.dumps([t.key, t.start, t.end, t.label, t.split]).encode())
    return h.hexdigest()


def label_map_of(tasks: list[ClipTask]) -> dict[str, int]:
    return {label: i for i, label in enumerate(sorted({t.label for t in tasks if t.label is not None}))}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, governor_cfg = load_config(args)
        tasks, missing = read_tasks(args, cfg)
    except (ConfigError, SourceError, OSError) as exc:
        print(f"avfusion preprocess: {exc}", file=sys.stderr)
        return 2
    refused = check_downloads(args, cfg, tasks)
    if refused:
        print(f"avfusion preprocess: {refused}", file=sys.stderr)
        return 2
    root = args.out.rstrip("/")
    storage.makedirs(root)
    for leftover in storage.list_files(root, "*.tmp-*"):  # local copies cut short by a killed run
        storage.remove(leftover)
    labels = label_map_of(tasks)
    digest = _digest(tasks, cfg)
    plan_path = storage.join(root, PLAN)
    if storage.exists(plan_path):
        previous = storage.read_json(plan_path)
        if previous["digest"] != digest:
            print(f"avfusion preprocess: {args.out} holds shards of a different clip list or shard size; "
                  "use a new --out, or the same arguments to resume", file=sys.stderr)
            return 2
    else:
        write_json_atomic(plan_path, {"digest": digest, "clips": len(tasks), "shard_size": cfg.shard_size})

    done = read_all_stats(root)
    if args.retry_failed:
        shards, round_ = _retry_plan(root, tasks, done, cfg, args.retry_all_failures)
    else:
        shards, round_ = plan_shards(tasks, cfg.shard_size), 0
        if missing and "missing" not in done:
            write_stats(root, ShardStats("missing", "", len(missing), 0, len(missing), 0, 0.0, 0, [], missing))
    todo = {name: ts for name, ts in shards.items() if name not in done}
    print(f"{len(tasks)} clips, {len(shards)} shards ({len(shards) - len(todo)} already done), "
          f"{len(labels)} labels → {args.out}")
    downloads = _run_on_ray(todo, cfg, labels, args, round_, governor_cfg) if todo else None
    # Nothing ran: the stats just read are still all there is (20,000 GETs saved at scale).
    code = _finish(root, labels, cfg, args.out, None if todo else done, downloads)
    if downloads and downloads.get("stopped"):
        command = " ".join(shlex.quote(a) for a in ["avfusion", "preprocess", *(argv if argv is not None else sys.argv[1:])])
        print(f"STOPPED: the download source is blocked ({downloads['stopped']}) for longer than --max-blocked; "
              f"finished shards are kept. Resume later with: {command}", file=sys.stderr)
        return 3
    return code


def _retry_plan(root, tasks, done, cfg, include_permanent):
    """Shards for a retry round; an interrupted round is resumed with its own plan."""
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
    write_json_atomic(storage.join(root, f"_retry{round_:02d}.json"),
                      {"round": round_, "shards": {n: [t.key for t in ts] for n, ts in shards.items()}})
    return shards, round_


def _run_on_ray(todo: dict[str, list[ClipTask]], cfg: PreprocessConfig, labels, args, round_: int,
                governor_cfg: GovernorConfig) -> dict:
    """Run the shards; returns the governor's stats (``stopped`` set when a block
    outlasted --max-blocked: the remaining shards are then not started)."""
    import ray
    from tqdm import tqdm

    with ray_session(args.address, args.num_cpus, verbose=args.verbose):
        # Worker death re-runs the whole shard: process_shard is idempotent.
        # Each task downloads as its host (process_shard's default node): the source address.
        remote = ray.remote(num_cpus=1, max_retries=args.task_retries)(process_shard)
        remote_input = any(t.is_remote for ts in todo.values() for t in ts)  # no downloads: no governor
        governor = _ActorGovernor(ray.remote(Governor).options(num_cpus=0).remote(governor_cfg)) if remote_input else None
        cfg_ref, labels_ref = ray.put(cfg), ray.put(labels)
        limit = args.concurrency or max(1, int(ray.cluster_resources().get("CPU", 1)))
        queue = list(todo.items())
        running: dict = {}
        with tqdm(total=sum(len(t) for t in todo.values()), desc="preprocess", unit="clip") as bar:
            while queue or running:
                while queue and len(running) < limit:
                    name, tasks = queue.pop(0)
                    ref = remote.remote(name, tasks, cfg_ref, labels_ref, args.out, round_, governor=governor)
                    running[ref] = (name, len(tasks))
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    name, n = running.pop(ref)
                    try:
                        stats = ray.get(ref)
                        bar.set_postfix(failed=stats.failed, refresh=False)
                    except (ray.exceptions.RayError, OSError) as exc:
                        if _is_blocked(exc):  # no stats: the shard is redone by a re-run
                            queue.clear()
                            continue
                        _record_task_failure(args.out, name, todo[name], round_, exc)
                        tqdm.write(f"shard {name} failed after Ray's retries ({type(exc).__name__}); "
                                   f"its {n} clips are recorded as {TASK_FAILED}")
                    bar.update(n)
        return governor.stats() if governor else None


def _is_blocked(exc: BaseException) -> bool:
    return isinstance(exc, SourceBlocked) or isinstance(getattr(exc, "cause", None), SourceBlocked)


class _ActorGovernor:
    """The job's one ``Governor``, hosted as a Ray actor; the same plain methods.
    (Stands in until ``avfusion.executor``'s ``shared()`` hosts it.)"""

    def __init__(self, handle):
        self.handle = handle

    def acquire(self, node: str) -> tuple[str, float]:
        import ray

        return ray.get(self.handle.acquire.remote(node))

    def report(self, node: str, kind: str | None) -> None:
        self.handle.report.remote(node, kind)  # fire and forget: actor calls stay ordered

    def stop_kind(self) -> str | None:
        import ray

        return ray.get(self.handle.stop_kind.remote())

    def stats(self) -> dict:
        import ray

        return ray.get(self.handle.stats.remote())


def _record_task_failure(out: str, shard: str, tasks: list[ClipTask], round_: int, exc: BaseException) -> None:
    """A shard whose Ray task failed after its retries (worker node lost, OOM, …) still
    ends with stats: one transient ``task_failed`` row per clip and no tar, so every
    clip is accounted for and ``--retry-failed`` redoes exactly these. A tar the task
    may have uploaded before dying is left out of the manifest (its stats are these)."""
    message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
    failures = [Failure(t.key, t.source, TASK_FAILED, True, message, 1, t.label) for t in tasks]
    by_class: dict[str, dict[str, int]] = {}
    for t in tasks:
        by_class.setdefault(t.label or "", {"failed": 0})["failed"] += 1
    write_stats(out.rstrip("/"), ShardStats(shard, "", len(tasks), 0, len(tasks), 0, 0.0, round_, [], failures,
                                            by_class=by_class))


def _finish(root: str, labels, cfg: PreprocessConfig, out: str, done: dict | None = None,
            downloads: dict | None = None) -> int:
    done = read_all_stats(root) if done is None else done
    failures = latest_failures(done)
    # Tars without stats: a task that died after its upload, before its marker.
    stats_names = {s.shard for s in done.values()}
    orphans = sorted(storage.basename(t)[:-4] for t in storage.list_files(root, "*.tar")
                     if storage.basename(t)[:-4] not in stats_names)
    lost = sorted(f.key for f in failures.values() if f.kind == TASK_FAILED)
    manifest = build_manifest({k: s for k, s in done.items() if s.tar}, labels,
                              {"clip": asdict(cfg.clip), "shard_size": cfg.shard_size}, __version__)
    manifest["complete"] = not lost and not orphans and not (downloads or {}).get("stopped")
    if downloads:  # this run's governor: grants, blocked seconds, cooldowns, downloads/hour
        manifest["downloads"] = downloads
    manifest["task_failed_clips"] = len(lost)
    write_failures_table(root, failures)
    write_json_atomic(storage.join(root, MANIFEST), manifest)  # last: it describes everything above
    kinds = Counter((f.kind, f.transient) for f in failures.values())
    seconds = sum(s.seconds for s in done.values())
    print(f"\n{'shards':<24}{manifest['num_shards']:>10}")
    print(f"{'samples':<24}{manifest['num_samples']:>10}   {dict(manifest['by_split'])}")
    print(f"{'failed clips':<24}{len(failures):>10}")
    for (kind, transient), n in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<22}{n:>10}   {'transient: --retry-failed' if transient else 'permanent'}")
    print(f"{'bytes':<24}{sum(s.bytes for s in done.values()):>10}")
    print(f"{'task seconds':<24}{seconds:>10.1f}")
    if downloads:
        print(f"{'downloads/hour':<24}{downloads['downloads_per_hour']:>10.1f}   "
              f"blocked {downloads['blocked_seconds']:.0f} s, {downloads['cooldowns']} cooldowns, "
              f"{downloads['probes']} probes {downloads['blocks'] or ''}")
    print(f"manifest: {out.rstrip('/')}/{MANIFEST}; failures: {out.rstrip('/')}/failures.parquet")
    if lost or orphans:
        redo = []
        if orphans:
            redo.append(f"{len(orphans)} unfinished shards ({', '.join(orphans[:3])}{', …' if len(orphans) > 3 else ''}):"
                        " re-run the same command")
        if lost:
            redo.append(f"{len(lost)} clips whose Ray task failed after its retries ({TASK_FAILED}):"
                        " re-run with --retry-failed")
        print("INCOMPLETE: " + "; ".join(redo), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
