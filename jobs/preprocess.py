"""`avfusion preprocess INPUT --out SHARDS`: clips → Ray tasks → WebDataset shards.

INPUT is a VGGSound CSV (no header), a URL list (CSV with header or Parquet with a
``url`` column), or a folder of videos. Work is split deterministically into
shard-sized Ray tasks; each writes ``NNNNN.tar`` then ``NNNNN_stats.json``. Re-running
the same command skips finished shards; ``--retry-failed`` re-attempts only clips
whose last failure was transient (``--retry-all-failures``: every failure) into new
shards. The run ends with ``manifest.json``, ``failures.parquet`` and a summary.
``--executor local`` runs the shards in this process instead of on Ray.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from jobs import executor_of


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="avfusion preprocess",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument(
        "input", help="VGGSound CSV, URL list (.csv with header / .parquet), or a folder of videos"
    )
    p.add_argument("--out", required=True, help="shard folder: a local path or an fsspec URL (s3://…)")
    p.add_argument("--input-kind", choices=["auto", "vggsound", "urls", "folder"], default="auto")
    src = p.add_argument_group("selection")
    src.add_argument(
        "--labels", help="VGGSound-format CSV labelling a folder's files ({id}_{start:06d} or {id} stems)"
    )
    src.add_argument("--labels-from-dirs", action="store_true", help="label = first sub-folder name")
    src.add_argument("--split", action="append", help="keep this split (repeatable)")
    src.add_argument("--label", action="append", help="keep this label (repeatable)")
    src.add_argument("--limit", type=int, help="keep the first N clips after filtering")
    src.add_argument(
        "--allow-local-paths",
        action="store_true",
        help="a URL list may name local paths and file:// URLs (read from the disk of the worker "
        "that runs the clip); by default only http(s):// and object-store URLs",
    )
    dl = p.add_argument_group("download (passed to yt-dlp)")
    dl.add_argument("--url-template", help="URL for an id, with {id}; default the YouTube watch URL")
    dl.add_argument("--cookies", help="cookies.txt for yt-dlp (YouTube's bot check)")
    dl.add_argument("--proxy")
    dl.add_argument(
        "--rate-limit",
        help="refused: ffmpeg (every section download) ignores it; use "
        "--downloads-per-hour and --min-spacing",
    )
    dl.add_argument(
        "--sleep",
        type=float,
        help="seconds to sleep before each request (also the download spacing unless --min-spacing is given)",
    )
    dl.add_argument("--format", help="yt-dlp format selector")
    dl.add_argument("--max-attempts", type=int, help="attempts per clip for transient errors (default 4)")
    dl.add_argument(
        "--yt-dlp-option",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="any other yt-dlp option, value as JSON (repeatable)",
    )
    run = p.add_argument_group("run")
    run.add_argument("--config", help="YAML with clip:, download:, limits:, preprocess: sections")
    run.add_argument("--frame-size", type=int, help="stored frame size in pixels (default 224)")
    run.add_argument("--shard-size", type=int, help="clips per shard / Ray task (default 100)")
    run.add_argument("--concurrency", type=int, help="Ray tasks in flight (default: cluster CPUs)")
    run.add_argument("--threads", type=int, help="clips in flight inside one task (default 4)")
    run.add_argument(
        "--retry-failed", action="store_true", help="re-attempt clips whose last failure was transient"
    )
    run.add_argument(
        "--retry-all-failures", action="store_true", help="with --retry-failed: permanent ones too"
    )
    run.add_argument(
        "--address", help="Ray cluster address; default: embedded local Ray (or the job's cluster)"
    )
    run.add_argument("--num-cpus", type=int, help="CPUs for the embedded Ray")
    run.add_argument(
        "--task-retries",
        type=int,
        default=3,
        help="Ray re-runs of a shard task whose worker died (default 3); after them its clips "
        "are recorded as task_failed",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="write into an --out folder that holds files preprocess did not write (they are left as "
        "they are; files named like ours are replaced)",
    )
    run.add_argument("--verbose", action="store_true", help="show Ray's own log lines")
    run.add_argument(
        "--executor",
        choices=["ray", "local"],
        default="ray",
        help="ray (default): one Ray task per shard; local: shards in this process, "
        "--concurrency at a time (default 1)",
    )
    gov = p.add_argument_group("download budget and blocks (one governor for the whole job)")
    gov.add_argument(
        "--downloads-per-hour",
        type=float,
        help="per node (default 300: YouTube's guest figure; the account's 2000/h caps all nodes "
        "when --cookies is given)",
    )
    gov.add_argument(
        "--min-spacing", type=float, help="seconds between downloads on a node, +0-100%% jitter (default 5)"
    )
    gov.add_argument(
        "--max-blocked",
        type=float,
        help="seconds a block may last before the job stops cleanly (default 3600; re-run to resume)",
    )
    gov.add_argument(
        "--allow-no-solver",
        action="store_true",
        help="download from YouTube even without a JS runtime + challenge solver (formats go missing)",
    )
    return p


def governor_config(args, cookies: bool):
    """The download governor's budget: defaults for a guest or an account (cookies), the
    YAML ``governor:`` section (any ``GovernorConfig`` field), then the flags."""
    from avfusion.config import load_yaml
    from avfusion.governor import GovernorConfig

    data = dict((load_yaml(args.config).get("governor") or {}) if args.config else {})
    # --sleep (yt-dlp's sleep_interval_requests skips a fresh instance's first request,
    # and every attempt is a fresh instance) also sets the governor's spacing.
    spacing = args.min_spacing if args.min_spacing is not None else args.sleep
    flags = {
        "per_node_per_hour": args.downloads_per_hour,
        "min_spacing": spacing,
        "max_blocked": args.max_blocked,
    }
    data.update({k: v for k, v in flags.items() if v is not None})
    return GovernorConfig.for_cookies(cookies, **data)


def load_config(args):
    """The ``PreprocessConfig``: YAML sections, then the command line's overrides."""
    from dataclasses import replace

    from avfusion.config import ClipSpec, load_section, load_yaml
    from avfusion.decode import DecodeLimits
    from avfusion.download import DownloadConfig
    from avfusion.preprocess.shard import PreprocessConfig

    sections = load_yaml(args.config) if args.config else {}
    clip = load_section(ClipSpec, args.config, "clip", frame_size=args.frame_size)
    extra = dict((sections.get("download") or {}).get("extra") or {})
    for item in args.yt_dlp_option:
        key, _, value = item.partition("=")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    download = load_section(
        DownloadConfig,
        args.config,
        "download",
        url_template=args.url_template,
        cookies=args.cookies,
        proxy=args.proxy,
        rate_limit=args.rate_limit,
        sleep_seconds=args.sleep,
        format=args.format,
        max_attempts=args.max_attempts,
        extra=extra or None,
    )
    limits = load_section(DecodeLimits, args.config, "limits")
    base = load_section(PreprocessConfig, None, "preprocess")
    pre = sections.get("preprocess") or {}
    return replace(
        base,
        clip=clip,
        download=download,
        limits=limits,
        shard_size=args.shard_size or pre.get("shard_size", base.shard_size),
        threads_per_task=args.threads or pre.get("threads_per_task", base.threads_per_task),
    )


def job_of(args, cfg):
    from avfusion.preprocess.run import PreprocessJob

    return PreprocessJob(
        input=args.input,
        out=args.out,
        config=cfg,
        input_kind=args.input_kind,
        labels=args.labels,
        labels_from_dirs=args.labels_from_dirs,
        splits=tuple(args.split or ()),
        keep_labels=tuple(args.label or ()),
        limit=args.limit,
        retry_failed=args.retry_failed,
        retry_all_failures=args.retry_all_failures,
        task_retries=args.task_retries,
        governor=governor_config(args, bool(cfg.download.cookies)),
        allow_no_solver=args.allow_no_solver,
        force=args.force,
        allow_local_paths=args.allow_local_paths,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from avfusion.config import ConfigError
    from avfusion.preprocess.run import PreprocessError, run_preprocess

    try:
        job = job_of(args, load_config(args))
    except (ConfigError, OSError) as exc:  # OSError: an unreadable --config
        return _refused(exc)
    try:
        result = run_preprocess(job, executor_of(args))
    except PreprocessError as exc:
        return _refused(exc)
    if result.stopped:
        command = " ".join(
            shlex.quote(a) for a in ["avfusion", "preprocess", *(sys.argv[1:] if argv is None else argv)]
        )
        print(
            f"STOPPED: the download source is blocked ({result.stopped}) for longer than --max-blocked; "
            f"finished shards are kept. Resume later with: {command}",
            file=sys.stderr,
        )
    return result.exit_code


def _refused(exc: BaseException) -> int:
    print(f"avfusion preprocess: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
