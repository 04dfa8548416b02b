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
import os
import shlex
import sys
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from jobs import JobParser, executor_of, refuse, refusing


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(
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
    dl.add_argument(
        "--player-clients",
        metavar="A,B",
        help="YouTube player clients yt-dlp asks, in order (default: yt-dlp's own for a guest or "
        "with --cookies, less SABR-only ones; avfusion doctor prints them)",
    )
    dl.add_argument(
        "--pot-provider",
        metavar="URL",
        help="base URL of a bgutil PO-token provider's HTTP server (e.g. http://127.0.0.1:4416); "
        "needs pip install 'avfusion[pot]'; avfusion doctor --pot-provider URL pings it",
    )
    dl.add_argument(
        "--proxy",
        action="append",
        help="http:// proxy URL; repeat it for a pool (each proxy is one egress address with its own "
        "budget and block state); a password is better given in AVFUSION_PROXY_PASSWORD (with "
        "AVFUSION_PROXY_USER) or a --proxies file than here, where ps shows it",
    )
    dl.add_argument(
        "--proxies",
        metavar="FILE",
        help="file (path or URL) of proxy URLs, credentials included, one a line: the egress pool",
    )
    dl.add_argument(
        "--egress-id",
        help="the budget's name for a node's own address when no proxy is given (default the node's "
        "IP); give nodes behind one NAT the same one, so they share one budget",
    )
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
    dl.add_argument(
        "--fetch",
        choices=["pyav", "ffmpeg"],
        help="how the window is fetched once yt-dlp resolved the formats: pyav (default: read in this "
        "process, bounded Range requests through yt-dlp) or ffmpeg (yt-dlp's section downloader)",
    )
    dl.add_argument(
        "--ffmpeg", help="ffmpeg binary for section downloads (default: PATH, then imageio-ffmpeg)"
    )
    dl.add_argument(
        "--js-runtime",
        action="append",
        default=[],
        metavar="NAME[:PATH]",
        help="a JS runtime yt-dlp may use (deno, node, bun, quickjs), optionally its binary (repeatable)",
    )
    dl.add_argument("--max-attempts", type=int, help="attempts per clip for transient errors (default 4)")
    dl.add_argument(
        "--yt-dlp-option",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="an allowed yt-dlp option (docs/youtube.md lists them), value as JSON (repeatable)",
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
    run.add_argument(
        "--verbose", action="store_true", help="show Ray's own log lines, and a refused input's traceback"
    )
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
    from avfusion.config import from_dict, load_yaml
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
    checked = from_dict(GovernorConfig, data, prefix="governor")  # keys, types, bounds
    return GovernorConfig.for_cookies(cookies, **{k: getattr(checked, k) for k in data})


def yt_dlp_options(items: list[str]) -> dict:
    """``--yt-dlp-option KEY=JSON`` (repeatable) → {KEY: value}; a value that is not
    JSON is taken as a string. No ``=`` or no key is a ``ConfigError``."""
    from avfusion.config import ConfigError

    options = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ConfigError(f"--yt-dlp-option: {item!r} is not KEY=JSON (e.g. retries=3)")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def load_config(args):
    """The ``PreprocessConfig``: YAML sections, then the command line's overrides."""
    from dataclasses import fields, replace

    from avfusion.config import ClipSpec, ConfigError, from_dict, load_section, load_yaml
    from avfusion.decode import DecodeLimits
    from avfusion.download import DownloadConfig
    from avfusion.preprocess.shard import PreprocessConfig

    sections = load_yaml(args.config) if args.config else {}
    refuse_programs(sections.get("download") or {})
    clip = load_section(ClipSpec, args.config, "clip", frame_size=args.frame_size)
    extra = (sections.get("download") or {}).get("extra") or {}
    if not isinstance(extra, dict):
        raise ConfigError(f"download.extra: expected a mapping of yt-dlp options, got {extra!r}")
    extra = {**extra, **yt_dlp_options(args.yt_dlp_option)}
    download = load_section(
        DownloadConfig,
        args.config,
        "download",
        url_template=args.url_template,
        cookies=args.cookies,
        egress_id=args.egress_id,
        rate_limit=args.rate_limit,
        sleep_seconds=args.sleep,
        format=args.format,
        fetch=args.fetch,
        max_attempts=args.max_attempts,
        ffmpeg=args.ffmpeg,
        js_runtimes=js_runtimes(args.js_runtime),
        player_clients=client_list(args.player_clients),
        pot_provider=args.pot_provider,
        extra=extra or None,
    )
    limits = load_section(DecodeLimits, args.config, "limits")
    pre = dict(sections.get("preprocess") or {})
    # clip, download and limits are sections of their own: one spelling for each key
    own = sorted({f.name for f in fields(PreprocessConfig)} - {"clip", "download", "limits"})
    unknown = sorted(map(str, set(pre) - set(own)))
    if unknown:
        raise ConfigError(f"preprocess: unknown key(s) {unknown}; allowed: {own}")
    flags = {"shard_size": args.shard_size, "threads_per_task": args.threads}
    pre.update({k: v for k, v in flags.items() if v is not None})
    base = from_dict(PreprocessConfig, pre, prefix="preprocess")
    return replace(base, clip=clip, download=download, limits=limits)


def refuse_programs(download: dict) -> None:
    """A config names no program to run: it may be someone else's file (``--config
    s3://…``), and yt-dlp would execute the ffmpeg and JS runtime it names. Those come
    from PATH, the imageio-ffmpeg wheel and the environment's deno, or the flags."""
    from avfusion.config import ConfigError

    if download.get("ffmpeg") is not None:
        raise ConfigError("download.ffmpeg: a config may not name a program to run; use --ffmpeg PATH")
    runtimes = download.get("js_runtimes")
    for name, options in runtimes.items() if isinstance(runtimes, dict) else ():
        if isinstance(options, dict) and options.get("path") is not None:
            raise ConfigError(
                f"download.js_runtimes.{name}.path: a config may not name a program to run; "
                f"use --js-runtime {name}:PATH"
            )


def client_list(given: str | None) -> tuple[str, ...] | None:
    """``--player-clients A,B`` → ``("A", "B")``; None when not given."""
    return tuple(c.strip() for c in given.split(",")) if given else None


def js_runtimes(given: list[str]) -> dict[str, dict] | None:
    """``--js-runtime NAME[:PATH]`` (repeatable) → yt-dlp's ``js_runtimes``; None: the
    config's or yt-dlp's default."""
    if not given:
        return None
    runtimes: dict[str, dict] = {}
    for item in given:
        name, _, path = item.partition(":")
        runtimes[name] = {"path": path} if path else {}
    return runtimes


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


PROXY_ENV = "AVFUSION_PROXY"  # the whole proxy URL, credentials included
PROXY_USER_ENV = "AVFUSION_PROXY_USER"
PROXY_PASSWORD_ENV = "AVFUSION_PROXY_PASSWORD"
CREDENTIALS_HINT = (
    f"proxy credentials left out: give them in {PROXY_USER_ENV}/{PROXY_PASSWORD_ENV} "
    f"(or {PROXY_ENV}, or --proxies FILE)"
)


def proxies_of(
    proxy: list[str] | None,
    proxies: str | None,
    configured: tuple[str, ...],
    environ: dict[str, str] | os._Environ,
) -> tuple[str, ...]:
    """The download proxies (the egress pool) with their credentials: every ``--proxy``,
    else every line of ``--proxies FILE``, else ``AVFUSION_PROXY`` (one URL), else the
    config's ``download.proxy`` / ``download.proxies``; ``AVFUSION_PROXY_USER`` /
    ``AVFUSION_PROXY_PASSWORD`` spliced into each when set (a provider's pool shares one
    account). Credentials then live in this process and in ``DownloadConfig.proxies``
    (pickled to the workers), not in any command line. ``ConfigError`` names what is
    wrong."""
    from avfusion import storage
    from avfusion.config import ConfigError
    from avfusion.download import check_pool, check_proxy

    if proxy and proxies:
        raise ConfigError("--proxy and --proxies both given: give one")
    pool = tuple(proxy or ())
    if proxies:
        try:
            text = storage.read_small(proxies, 1 << 20, "--proxies").decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"--proxies {proxies}: not UTF-8 text (byte {exc.start})") from None
        lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1)]
        lines = [(n, ln) for n, ln in lines if ln and not ln.startswith("#")]
        for n, url in lines:
            try:
                check_proxy(url)
            except ConfigError:
                raise ConfigError(
                    f"--proxies {proxies} line {n}: not a proxy URL (scheme://[USER:PASSWORD@]host:port, "
                    "'#', '?', '/', '@', ':' percent-encoded in the credentials)"
                ) from None
        pool = tuple(url for _, url in lines)
        if not pool:
            raise ConfigError(f"--proxies {proxies}: holds no proxy URL (one a line; # starts a comment)")
    pool = pool or ((environ[PROXY_ENV],) if environ.get(PROXY_ENV) else configured)
    check_pool(None, pool)  # one line naming what is wrong, before any use of the URLs
    user, password = environ.get(PROXY_USER_ENV), environ.get(PROXY_PASSWORD_ENV)
    if not (user or password):
        return pool
    if not pool:
        raise ConfigError(
            f"{PROXY_USER_ENV}/{PROXY_PASSWORD_ENV} are set but no proxy is given "
            f"(--proxy, --proxies, {PROXY_ENV} or download.proxy)"
        )
    return tuple(_with_credentials(url, user, password) for url in pool)


def _with_credentials(url: str, user: str | None, password: str | None) -> str:
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)  # the URL's own credentials are percent-encoded: decoded, then encoded once
    user = user if user is not None else unquote(parts.username or "")
    password = password if password is not None else (unquote(parts.password) if parts.password else None)
    host = parts.netloc.rsplit("@", 1)[-1]
    userinfo = quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


def proxy_password(url: str | None) -> str | None:
    """The password in a proxy URL (as written, percent-encoded), or None."""
    try:
        return urlsplit(url if "://" in url else f"http://{url}").password if url else None
    except ValueError:
        return None


def resume_command(argv: list[str], redactor) -> str:
    """The command line that resumes this run, fit to print: user info removed from
    every URL argument (and a note saying where credentials go instead), then the job's
    redactor over the whole line (cookie values, signed parameters, known secrets)."""
    public, dropped = [], False
    for arg in argv:
        flag, eq, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        try:
            parts = urlsplit(value)
            has_userinfo = "://" in value and "@" in parts.netloc
        except ValueError:
            has_userinfo = False
        if has_userinfo:
            value, dropped = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1])), True
        public.append(f"{flag}{eq}{value}" if eq else value)
    command = redactor(" ".join(shlex.quote(a) for a in ["avfusion", "preprocess", *public]))
    return command + (f"  ({CREDENTIALS_HINT})" if dropped else "")


@refusing("avfusion preprocess")  # a bad flag, config value or clip list: one line, exit 2
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dataclasses import replace

    from avfusion.config import ConfigError
    from avfusion.governor import COOKIES_INVALID, PROXY_FAULT
    from avfusion.preprocess.run import PreprocessError, job_redactor, run_preprocess
    from avfusion.redact import Redactor

    # What the job knows to be secret before its config is read, for its refusal lines.
    aws_secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    redactor = Redactor([aws_secret or "", os.environ.get(PROXY_PASSWORD_ENV) or ""])
    inline = [password for url in args.proxy or () if (password := proxy_password(url))]
    for url in args.proxy or ():
        if "@" in url:  # the whole user info too: a bad URL may split it anywhere
            redactor.add(url.split("://", 1)[-1].rsplit("@", 1)[0])
    for password in inline:
        redactor.add(password, unquote(password))
    if inline:
        print(
            "avfusion preprocess: warning: the proxy password in --proxy is visible in the process "
            f"list for the whole run; give it in {PROXY_PASSWORD_ENV} (or --proxies FILE) instead",
            file=sys.stderr,
        )
    try:
        cfg = load_config(args)
        pool = proxies_of(args.proxy, args.proxies, cfg.download.pool, os.environ)
        cfg = replace(cfg, download=replace(cfg.download, proxy=None, proxies=pool))
        job = replace(job_of(args, cfg), secrets=(aws_secret,) if aws_secret else ())
        redactor = job_redactor(job)
    except (ConfigError, OSError) as exc:  # OSError: an unreadable --config or --proxies
        return refuse("avfusion preprocess", exc, args.verbose, redactor)
    try:
        result = run_preprocess(job, executor_of(args), redactor)
    except PreprocessError as exc:
        return refuse("avfusion preprocess", exc, args.verbose, redactor)
    if result.stopped:
        command = resume_command(sys.argv[1:] if argv is None else argv, redactor)
        if result.stopped == COOKIES_INVALID:
            why = (
                "YouTube says the account cookies in the cookies file are no longer valid (rotated in "
                "the browser): export them again (docs/youtube.md)"
            )
        elif result.stopped == PROXY_FAULT:
            why = "the proxy failed by itself for longer than --max-blocked (check it: avfusion doctor)"
        else:
            why = f"the download source is blocked ({result.stopped}) for longer than --max-blocked"
        print(f"STOPPED: {why}; finished shards are kept. Resume later with: {command}", file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
