"""Hostile download settings: a config that would run a command is refused before any
work, secrets in the cookies file or the proxy URL never reach a message, and a proxy
that refuses us is a ``proxy_error``, never a block of the source."""

import contextlib
import dataclasses
import os
import shutil
import socket

import pytest

from avfusion.config import ClipSpec, ConfigError
from avfusion.decode import decode_clip
from avfusion.download import (
    DownloadConfig,
    DownloadError,
    _RecordingLogger,
    check_extra,
    download_redactor,
    download_section,
    sanitise_cookies,
)
from avfusion.governor import BLOCK_KINDS, Governor, GovernorConfig
from avfusion.sources import ClipTask
from avfusion.synth import SynthSpec, write_clip
from jobs import preprocess
from jobs.bench.origin import RangeServer
from jobs.bench.proxy import HttpProxy

SECRET = "zq9-cookie-value-7f3a"  # distinctive: grep-able in every output
MALFORMED = "mq4-malformed-line-e2d1"
PROXY_PASSWORD = "pr0xy-pass-51c8"
EXEC = [{"key": "Exec", "exec_cmd": "touch {marker}", "when": "after_move"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    write_clip(root / "c0.mp4", SynthSpec(duration=4.0, fps=10, width=96, height=72))
    for name in ("c1", "f403", SECRET):
        shutil.copy(root / "c0.mp4", root / f"{name}.mp4")
    return root


# ---------------------------------------------------------------- the allow-list


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {"postprocessors": EXEC},
            "download.extra: yt-dlp option 'postprocessors' is not allowed (only options that cannot "
            "run commands or write files pass); allowed: age_limit, allowed_extractors, extractor_args, "
            "format_sort, format_sort_force, geo_bypass, geo_bypass_country, geo_bypass_ip_block, "
            "http_headers, max_sleep_interval, prefer_free_formats, sleep_interval",
        ),
        ({"exec_cmd": ["touch x"]}, "yt-dlp option 'exec_cmd' is not allowed"),
        ({"external_downloader": {"default": "aria2c"}}, "'external_downloader' is not allowed"),
        ({"external_downloader_args": {"ffmpeg_o": ["/etc/x"]}}, "'external_downloader_args' is not allowed"),
        ({"paths": {"home": "/etc"}}, "'paths' is not allowed"),
        ({"outtmpl": "/etc/passwd"}, "'outtmpl' is not allowed"),
        ({"cookiesfrombrowser": ["firefox"]}, "'cookiesfrombrowser' is not allowed"),
        ({"netrc_cmd": "sh -c x"}, "'netrc_cmd' is not allowed"),
        ({"remote_components": ["ejs:github"]}, "'remote_components' is not allowed"),
        ({"download_archive": "/tmp/a"}, "'download_archive' is not allowed"),
        ({"load_info_filename": "/tmp/i.json"}, "'load_info_filename' is not allowed"),
        ({"check_formats": True}, "'check_formats' is not allowed"),
        ({"noequals": "noequals"}, "'noequals' is not allowed"),
        ({"proxy": "http://x:1"}, "yt-dlp option 'proxy' has its own setting: use download.proxy / --proxy"),
        ({"cookiefile": "c.txt"}, "'cookiefile' has its own setting: use download.cookies / --cookies"),
        ({"format": "best"}, "use download.format / --format"),
        ({"retries": 10}, "use download.max_attempts / --max-attempts"),
        ({"http_headers": {"Cookie": "SID=x"}}, "header 'Cookie' would be on ffmpeg's command line"),
        ({"http_headers": {"X-A": "1\r\nHost: evil"}}, "must be single lines"),
        (
            {"extractor_args": {"youtubepot-bgutilscript": {"script_path": ["/tmp/x.js"]}}},
            "argument 'youtubepot-bgutilscript:script_path' names a file or program",
        ),
        ({"extractor_args": {"youtube": {"player_client": "web"}}}, "values a list of strings"),
        ({"sleep_interval": -1}, "download.extra.sleep_interval: expected seconds in [0, 3600], got -1"),
        ({"geo_bypass_country": "USA"}, "expected a two-letter country code"),
        ({"age_limit": True}, "expected an age in [0, 150]"),
    ],
)
def test_yt_dlp_options_off_the_allow_list_are_refused_in_one_line(extra, message):
    with pytest.raises(ConfigError) as exc:
        DownloadConfig(extra=extra)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_allowed_yt_dlp_options_pass():
    extra = {
        "format_sort": ["res:360", "ext"],
        "extractor_args": {"youtube": {"lang": ["en"], "skip": ["translated_subs"]}},
        "http_headers": {"Accept-Language": "en"},
        "sleep_interval": 1,
        "max_sleep_interval": 2.5,
        "geo_bypass": True,
        "geo_bypass_country": "DE",
        "geo_bypass_ip_block": "10.0.0.0/8",
        "age_limit": 18,
        "allowed_extractors": ["youtube", "generic"],
        "prefer_free_formats": False,
        "format_sort_force": True,
    }
    check_extra(extra)
    assert DownloadConfig(extra=extra).extra == extra


def _exec_csv(tmp_path, server):
    csv = tmp_path / "vggsound.csv"
    csv.write_text("c0,0,dog,train\n")
    return [str(csv), "--out", str(tmp_path / "out"), "--url-template", server.url("{id}.mp4")]


@pytest.mark.slow
def test_exec_postprocessor_in_yaml_is_refused_and_nothing_runs(tmp_path, served, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "download:\n  extra:\n    postprocessors:\n"
        f"      - {{key: Exec, exec_cmd: 'touch {marker}', when: after_move}}\n"
    )
    with RangeServer(served) as server:
        code = preprocess.main([*_exec_csv(tmp_path, server), "--config", str(cfg), "--executor", "local"])
        assert server.log == []  # refused before anything was fetched
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "yt-dlp option 'postprocessors' is not allowed" in line and "allowed: " in line
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_exec_postprocessor_as_a_flag_is_refused_and_nothing_runs(tmp_path, served, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "PWNED"
    flag = f'postprocessors=[{{"key": "Exec", "exec_cmd": "touch {marker}", "when": "after_move"}}]'
    with RangeServer(served) as server:
        code = preprocess.main([*_exec_csv(tmp_path, server), "--yt-dlp-option", flag, "--executor", "local"])
        assert server.log == []
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "yt-dlp option 'postprocessors' is not allowed" in line
    assert not marker.exists()


@pytest.mark.slow
def test_an_allowed_option_reaches_yt_dlp_and_ffmpeg(tmp_path, served):
    """``http_headers`` from ``extra``: yt-dlp's own request and ffmpeg's section reads
    both carry the header to the origin."""
    cfg = DownloadConfig(socket_timeout=2.0, max_attempts=1, extra={"http_headers": {"X-Avf-Probe": "seen"}})
    with RangeServer(served) as server:
        download_section(
            ClipTask(key="c1", source=server.url("c1.mp4"), start=0.0),
            ClipSpec(clip_seconds=2.0),
            cfg,
            tmp_path,
        )
        log = list(server.log)
    ranged = [r for r in log if r["headers"].get("Range")]
    assert ranged and all(r["headers"].get("X-Avf-Probe") == "seen" for r in log), [r["headers"] for r in log]


# ---------------------------------------------------------------- cookies


def test_malformed_cookie_lines_are_dropped_and_named_without_their_value():
    text = (
        "# Netscape HTTP Cookie File\n"
        f"127.0.0.5\tFALSE\t/\tFALSE\t0\tSID\t{SECRET}\n"
        f"127.0.0.5\tFALSE\t/\tFALSE\t0\tHSID {SECRET}x\n"  # a space where a tab belongs: 6 fields
        f"127.0.0.5\tFALSE\t/\tFALSE\tnever\tAPISID\t{SECRET}y\n"
        f"127.0.0.5\tTRUE\t/\tFALSE\t0\tSSID\t{SECRET}z\n"  # subdomains flag without the dot
        f"#HttpOnly_.example.com\tTRUE\t/\tTRUE\t0\tX\t{SECRET}w\n"
        "\n"
    )
    kept, problems = sanitise_cookies(text)
    assert kept.splitlines() == [text.splitlines()[i] for i in (0, 1, 5, 6)]
    assert problems == [
        "cookies file line 3: 6 tab-separated fields where a cookie has 7; line skipped",
        "cookies file line 4: the expiry (field 5) is not a number; line skipped",
        "cookies file line 5: the include-subdomains flag (field 2) disagrees with the domain's leading dot; "
        "line skipped",
    ]
    assert not any(SECRET in p for p in problems)


def test_warnings_and_messages_pass_the_download_redactor(tmp_path):
    cookies = tmp_path / "cookies.txt"
    cookies.write_text(f"# Netscape HTTP Cookie File\n.example.com\tTRUE\t/\tFALSE\t0\tSID\t{SECRET}\n")
    redact = download_redactor(
        DownloadConfig(cookies=str(cookies), proxy=f"http://bob:{PROXY_PASSWORD}@127.0.0.1:3")
    )
    logger = _RecordingLogger(redact)
    logger.warning(f"WARNING: [generic] {SECRET}: falling back; proxy said {PROXY_PASSWORD}")
    assert logger.warnings == ["[generic] ***: falling back; proxy said ***"]


COOKIE_HOST = "127.0.0.5"  # ffmpeg sends a domain cookie only to a URL without a port


@pytest.mark.slow
def test_a_malformed_cookie_line_never_reaches_stderr_or_the_record(tmp_path, served, capfd):
    """yt-dlp echoes a refused cookie line, value and all, to stderr on every attempt:
    the private copy it reads no longer has the line; the good cookie still reaches the
    origin, the record says which line was skipped, and a failure's message (here the
    id yt-dlp derives from a URL that holds the value) is redacted."""
    cookies = tmp_path / "cookies.txt"
    cookies.write_text(
        "# Netscape HTTP Cookie File\n"
        f"{COOKIE_HOST}\tFALSE\t/\tFALSE\t0\tSID\t{SECRET}\n"
        f"{COOKIE_HOST}\tFALSE\t/\tFALSE\t0\tHSID {MALFORMED}\n"
    )
    cfg = DownloadConfig(cookies=str(cookies), socket_timeout=2.0, max_attempts=2, backoff_base=0.01)
    with RangeServer(served, host=COOKIE_HOST, port=80) as server:
        server.set_fault(f"{SECRET}.mp4", "404")
        work = tmp_path / "w1"
        work.mkdir()
        download_section(
            ClipTask(key="c1", source=server.url("c1.mp4"), start=0.0), ClipSpec(clip_seconds=2.0), cfg, work
        )
        with pytest.raises(DownloadError) as exc:
            download_section(
                ClipTask(key="s", source=server.url(f"{SECRET}.mp4"), start=0.0),
                ClipSpec(clip_seconds=2.0),
                cfg,
                work,
            )
        log = list(server.log)
    out = capfd.readouterr()
    assert SECRET not in out.err + out.out and MALFORMED not in out.err + out.out
    assert f"SID={SECRET}" in log[0]["headers"].get("Cookie", "")
    assert exc.value.kind == "not_found" and SECRET not in exc.value.message and "***" in exc.value.message
    assert (
        "cookies file line 3: 6 tab-separated fields where a cookie has 7; line skipped" in exc.value.warnings
    )
    assert not any(SECRET in w or MALFORMED in w for w in exc.value.warnings)


@pytest.mark.slow  # the JS runtime report starts a subprocess
def test_the_job_names_malformed_cookie_lines_once_before_any_download(tmp_path, capfd):
    from avfusion.preprocess.run import PreprocessJob, check_downloads

    cookies = tmp_path / "cookies.txt"
    cookies.write_text(
        "# Netscape HTTP Cookie File\n"
        f"{COOKIE_HOST}\tFALSE\t/\tFALSE\t0\tSID\t{SECRET}\n"
        f"{COOKIE_HOST}\tFALSE\t/\tFALSE\t0\tHSID {MALFORMED}\n"
    )
    job = PreprocessJob(input="x.csv", out=str(tmp_path / "out"))
    job = dataclasses.replace(
        job, config=dataclasses.replace(job.config, download=DownloadConfig(cookies=str(cookies)))
    )
    tasks = [ClipTask(key=f"k{i}", source=f"http://{COOKIE_HOST}/c{i}.mp4") for i in range(3)]
    assert check_downloads(job, tasks) is None
    out = capfd.readouterr()
    assert out.out.count("cookies file line 3: 6 tab-separated fields where a cookie has 7") == 1
    assert SECRET not in out.out + out.err and MALFORMED not in out.out + out.err


# ---------------------------------------------------------------- proxies


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once closed


def _through(proxy_url, source, tmp_path, governor=None, attempts=2, fetch="pyav"):
    cfg = DownloadConfig(
        proxy=proxy_url, socket_timeout=2.0, max_attempts=attempts, backoff_base=0.01, fetch=fetch
    )
    with pytest.raises(DownloadError) as exc:
        download_section(
            ClipTask(key="c", source=source, start=0.0),
            ClipSpec(clip_seconds=2.0),
            cfg,
            tmp_path,
            governor=governor,
            sleep=lambda s: None,
        )
    return exc.value


def _governor():
    return Governor(
        GovernorConfig(
            min_spacing=0.0, jitter=0.0, forbidden_streak=1, cooldown_start=0.01, cooldown_max=0.01
        )
    )


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest.mark.parametrize("status", [403, 407])
def test_a_proxy_that_refuses_us_is_a_proxy_error_not_a_block(tmp_path, served, scheme, status):
    """The proxy answers ``status`` itself: to the CONNECT of an https source, to the
    plain request of an http one (which reads like the origin's 403: the CONNECT probe
    tells them apart). The governor sees no block; the password is in no message."""
    governor = _governor()
    with RangeServer(served) as server, HttpProxy() as proxy:
        proxy.refuse(status)
        source = server.url("c1.mp4") if scheme == "http" else f"https://127.0.0.1:{_dead_port()}/c1.mp4"
        user_url = proxy.url.replace("http://", f"http://bob:{PROXY_PASSWORD}@")
        error = _through(user_url, source, tmp_path, governor)
        assert server.log == []  # nothing reached the origin
    assert (error.kind, error.transient, error.attempts) == ("proxy_error", True, 2), error.message
    assert error.kind not in BLOCK_KINDS and governor.stats()["blocks"] == {}
    assert PROXY_PASSWORD not in error.message and str(status) in error.message


@pytest.mark.slow
@pytest.mark.parametrize("status", [502, 503])
def test_a_proxy_failing_with_5xx_is_a_proxy_fault_for_an_https_source_never_a_block(
    tmp_path, served, status
):
    """A 5xx the proxy answers to the CONNECT of an https source (every YouTube URL) is
    the proxy's: a proxy fault, no block, no cooldown of the source. To the plain request
    of an http source the proxy relays the origin's answers, so its own 5xx reads like
    the origin's and stays a ``server_error``, retried like one (docs/youtube.md)."""
    with RangeServer(served) as server, HttpProxy() as proxy:
        proxy.refuse(status)
        governor = _governor()
        tunnel = _through(proxy.url, f"https://127.0.0.1:{_dead_port()}/c1.mp4", tmp_path, governor)
        assert (tunnel.kind, tunnel.transient) == ("proxy_error", True), tunnel.message
        assert governor.stats()["blocks"] == {} and str(status) in tunnel.message
        governor = _governor()
        relayed = _through(proxy.url, server.url("c1.mp4"), tmp_path, governor)
        assert server.log == []  # nothing reached the origin either way
    assert (relayed.kind, relayed.transient) == ("server_error", True), relayed.message
    assert governor.stats()["blocks"] == {}


@pytest.mark.slow
def test_a_proxy_that_refuses_the_connection_is_a_proxy_error(tmp_path):
    error = _through(
        f"http://bob:{PROXY_PASSWORD}@127.0.0.1:{_dead_port()}", "https://127.0.0.1:9/x.mp4", tmp_path
    )
    assert error.kind == "proxy_error" and "Unable to connect to proxy" in error.message
    assert PROXY_PASSWORD not in error.message


@pytest.mark.slow
@pytest.mark.parametrize("fetch, said", [("pyav", "HTTP Error 403"), ("ffmpeg", "ffmpeg exited with code 8")])
def test_a_proxy_that_fails_the_media_transfer_is_a_proxy_error(tmp_path, served, fetch, said):
    """The proxy lets yt-dlp's request through and answers the media request with 403.
    A 403 alone does not say who refused (ffmpeg's exit code 8 says even less); asking
    the proxy about itself does."""
    with RangeServer(served) as server, HttpProxy() as proxy:
        proxy.refuse(403, after=1)
        error = _through(proxy.url, server.url("c1.mp4"), tmp_path, attempts=1, fetch=fetch)
        served_paths = [r["path"] for r in server.log]
    assert error.kind == "proxy_error" and said in error.message, error.message
    assert served_paths == ["c1.mp4"]  # only the first request passed the proxy


@pytest.mark.slow
def test_the_origins_403_through_a_working_proxy_stays_a_block(tmp_path, served):
    governor = _governor()
    with RangeServer(served) as server, HttpProxy() as proxy:
        server.set_fault("f403.mp4", "403")
        error = _through(proxy.url, server.url("f403.mp4"), tmp_path, governor)
        assert server.requests["f403.mp4"] >= 1
    assert error.kind == "blocked_forbidden", error.message
    assert governor.stats()["blocks"].get("blocked_forbidden", 0) >= 1


def test_doctor_warns_on_malformed_cookie_lines_without_printing_a_value(tmp_path, capfd):
    from avfusion.doctor import OK, WARN, cookie_checks

    year = 2_000_000_000
    good = f"# Netscape HTTP Cookie File\n.youtube.com\tTRUE\t/\tTRUE\t{year}\tSID\t{SECRET}\n"
    (tmp_path / "good.txt").write_text(good)
    (tmp_path / "bad.txt").write_text(good + f".youtube.com\tTRUE\t/\tTRUE\t{year}\tHSID {MALFORMED}\n")
    assert cookie_checks(str(tmp_path / "good.txt"))[0].status == OK
    check = cookie_checks(str(tmp_path / "bad.txt"))[0]
    assert check.status == WARN and "cookies file line 3: 6 tab-separated fields" in check.detail, check
    printed = capfd.readouterr()
    assert not any(s in check.line() + printed.out + printed.err for s in (SECRET, MALFORMED))


class _ArgvWatch:
    """Reads every process's command line (/proc/*/cmdline, what any local user can
    read) every few milliseconds while a download runs: which ones held ``needle``, and
    how often an ffmpeg child of this process reading an input was seen (the watch is not
    vacuous; other processes' ffmpegs on the machine are not ours)."""

    def __init__(self, needle: str):
        import threading

        self.needle, self.hits, self.ffmpeg_seen = needle.encode(), [], 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        from pathlib import Path

        while not self.stop.is_set():
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    argv = cmdline.read_bytes()
                    ppid = int((cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                words = argv.split(b"\0")
                if b"ffmpeg" in words[0] and b"-i" in words and ppid == os.getpid():
                    self.ffmpeg_seen += 1  # a transfer (yt-dlp's version probes open no input)
                if self.needle in argv:
                    self.hits.append(argv.replace(b"\0", b" ").decode(errors="replace"))
            self.stop.wait(0.002)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


@pytest.mark.slow
@pytest.mark.parametrize("fetch", ["pyav", "ffmpeg"])
@pytest.mark.parametrize(
    "host, port, through_proxy",
    [(COOKIE_HOST, 80, False), (COOKIE_HOST, 80, True), ("127.0.0.1", 0, False)],
)
def test_cookies_reach_the_media_host_and_no_command_line(tmp_path, served, host, port, through_proxy, fetch):
    """An origin that answers 403 without the session cookie serves the section (so the
    media reads carried it), while no process's argv ever held the value; through a
    proxy too, and for a cookie of 127.0.0.1. PyAV reads in this process through yt-dlp's
    requests (no ffmpeg runs at all); yt-dlp's ffmpeg talks to the relay only (the
    relay's fetches go through the proxy; 127.0.0.1 is the relay's own address)."""
    cookies = tmp_path / "cookies.txt"
    cookies.write_text(f"# Netscape HTTP Cookie File\n{host}\tFALSE\t/\tFALSE\t0\tSID\t{SECRET}\n")
    work = tmp_path / "work"
    work.mkdir()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(RangeServer(served, host=host, port=port))
        server.require_cookie = f"SID={SECRET}"
        proxy = stack.enter_context(HttpProxy()) if through_proxy else None
        cfg = DownloadConfig(
            cookies=str(cookies),
            proxy=proxy.url if proxy else None,
            socket_timeout=2.0,
            max_attempts=1,
            fetch=fetch,
        )
        with _ArgvWatch(SECRET) as watch:
            path, *_ = download_section(
                ClipTask(key="c1", source=server.url("c1.mp4"), start=1.0),
                ClipSpec(clip_seconds=2.0),
                cfg,
                work,
            )
        log = list(server.log)
    assert decode_clip(path, ClipSpec(clip_seconds=2.0, frame_size=32)).quality.duration == pytest.approx(
        2.0, abs=0.3
    )
    ranged = [r for r in log if r["headers"].get("Range", "bytes=0-") != "bytes=0-"]
    assert ranged and all(f"SID={SECRET}" in r["headers"].get("Cookie", "") for r in log)
    assert watch.hits == [], watch.hits
    # no ffmpeg transfer with PyAV's fetch (and for the ffmpeg fetch the watch must see one)
    assert bool(watch.ffmpeg_seen) == (fetch == "ffmpeg"), watch.ffmpeg_seen
    if proxy:
        assert {r["peer"][0] for r in log} == {"127.0.0.2"}  # every origin request came through the proxy


@pytest.mark.slow
def test_a_rotated_cookie_is_sent_on_the_next_media_request(tmp_path, served):
    """The host sets a new session value on every response: each next request, yt-dlp's
    and the relay's alike, carries the value the previous response set. Ranges of 16 KiB:
    the window takes several media requests."""
    cookies = tmp_path / "cookies.txt"
    cookies.write_text(f"# Netscape HTTP Cookie File\n{COOKIE_HOST}\tFALSE\t/\tFALSE\t0\tSID\t{SECRET}\n")
    work = tmp_path / "work"
    work.mkdir()
    cfg = DownloadConfig(cookies=str(cookies), socket_timeout=2.0, max_attempts=1, request_size=16 << 10)
    with RangeServer(served, host=COOKIE_HOST, port=80) as server:
        server.rotate_cookie = "SID"
        download_section(
            ClipTask(key="c1", source=server.url("c1.mp4"), start=1.0), ClipSpec(clip_seconds=2.0), cfg, work
        )
        sent = [r["headers"].get("Cookie") for r in server.log]
    assert len(sent) >= 3 and sent[0] == f"SID={SECRET}"
    assert sent[1:] == [f"SID=rot-{i}" for i in range(1, len(sent))], sent


@pytest.mark.slow
@pytest.mark.parametrize("fetch", ["pyav", "ffmpeg"])
def test_with_cookies_a_transfer_retry_goes_through_the_relay_on_the_same_extraction(tmp_path, served, fetch):
    """The transfer answered 503 (PyAV's reader, or ffmpeg behind the cookie relay): the
    retry reuses the extraction (one request without Range at the origin) and still
    carries the session cookie the host rotated."""
    cookies = tmp_path / "cookies.txt"
    cookies.write_text(f"# Netscape HTTP Cookie File\n{COOKIE_HOST}\tFALSE\t/\tFALSE\t0\tSID\t{SECRET}\n")
    work = tmp_path / "work"
    work.mkdir()
    cfg = DownloadConfig(
        cookies=str(cookies), socket_timeout=2.0, max_attempts=1, backoff_base=0.05, fetch=fetch
    )
    with RangeServer(served, host=COOKIE_HOST, port=80) as server:
        server.rotate_cookie = "SID"
        server.refuse_ranged(503, 1)
        _, attempts, *_ = download_section(
            ClipTask(key="c1", source=server.url("c1.mp4"), start=1.0), ClipSpec(clip_seconds=2.0), cfg, work
        )
        log = list(server.log)
    assert attempts == 1 and [r["status"] for r in log if r["status"]] == [503]
    assert sum(not r["headers"].get("Range") for r in log) == 1, "one extraction"
    refused = next(i for i, r in enumerate(log) if r["status"])
    assert len(log) > refused + 1 and log[refused + 1]["headers"].get("Cookie") == f"SID=rot-{refused}"


@pytest.mark.slow
def test_a_rotated_cookie_reaches_the_next_clip_and_the_users_file_stays_as_exported(tmp_path, served):
    """The node keeps the cookies the host rotated (``avfusion.cookiejar``): the next
    clip's first request carries the last value the host set, not the exported one; the
    user's file is never written; a re-exported file starts from its own values."""
    cookies = tmp_path / "cookies.txt"
    exported = f"# Netscape HTTP Cookie File\n{COOKIE_HOST}\tFALSE\t/\tFALSE\t0\tSID\t{SECRET}\n"
    cookies.write_text(exported)
    cfg = DownloadConfig(cookies=str(cookies), socket_timeout=2.0, max_attempts=1)

    def clip(server, key):
        work = tmp_path / key
        work.mkdir()
        first = len(server.log)
        download_section(
            ClipTask(key=key, source=server.url("c1.mp4"), start=1.0), ClipSpec(clip_seconds=2.0), cfg, work
        )
        return [r["headers"].get("Cookie") for r in server.log[first:]]

    with RangeServer(served, host=COOKIE_HOST, port=80) as server:
        server.rotate_cookie = "SID"
        one = clip(server, "c1")
        last_set = f"SID=rot-{len(server.log)}"  # the value the last response of clip one set
        two = clip(server, "c2")
        cookies.write_text(exported.replace(SECRET, "re-exported-value"))
        three = clip(server, "c3")
        now_set = f"rot-{len(server.log)}"
    assert one[0] == f"SID={SECRET}" and two[0] == last_set, (one, two)
    assert three[0] == "SID=re-exported-value", three
    assert cookies.read_text() == exported.replace(SECRET, "re-exported-value")
    from avfusion import cookiejar

    jar = cookiejar.jar_path(str(cookies), sanitise_cookies(exported)[0])
    assert oct(os.stat(os.path.dirname(jar)).st_mode & 0o777) == "0o700"
    # What the host set is a secret too: the download's redaction knows it.
    assert now_set not in download_redactor(cfg)(f"SID={now_set}")
