"""Pass-through options tested by their effect at a loopback origin: cookies from a
read-only mount reach the server, an HTTP proxy carries all the media, the governor's
spacing shows in the server's request times, SOCKS and --rate-limit are refused."""

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from avfusion.config import ClipSpec
from avfusion.download import DownloadConfig, DownloadError, download_section
from avfusion.governor import Governor, GovernorConfig
from avfusion.preprocess.shard import PreprocessConfig, process_shard
from avfusion.sources import ClipTask
from avfusion.synth import SynthSpec, write_clip
from jobs.bench.origin import RangeServer
from jobs.bench.proxy import HttpProxy

FAST = DownloadConfig(socket_timeout=2.0, max_attempts=2, backoff_base=0.05)
# ffmpeg sends a cookie with a domain only to a URL without an explicit port (it
# matches the domain against "host:port"), as real media URLs are: the cookie test's
# origin listens on port 80 of its own loopback address.
COOKIE_HOST = "127.0.0.5"  # not 127.0.0.3: tests/ray_cluster.py uses it
COOKIES = (
    "# Netscape HTTP Cookie File\n"
    f"{COOKIE_HOST}\tFALSE\t/\tFALSE\t0\tSID\tsecret-session-42\n"
    ".youtube.com\tTRUE\t/\tTRUE\t2000000000\tLOGIN_INFO\tabc\n"
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    write_clip(root / "c0.mp4", SynthSpec(duration=6.0, fps=10, width=96, height=72))
    for i in range(1, 6):
        shutil.copy(root / "c0.mp4", root / f"c{i}.mp4")
    return root


@contextlib.contextmanager
def read_only_mount(folder: Path):
    """``folder`` bind-mounted read-only at a sibling path (we run as root)."""
    target = folder.parent / f"{folder.name}-ro"
    target.mkdir()
    subprocess.run(["mount", "--bind", str(folder), str(target)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True)
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)
        target.rmdir()


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_cookies_from_a_read_only_mount_reach_the_origin_and_stay_untouched(tmp_path, served):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "cookies.txt").write_text(COOKIES)
    with read_only_mount(secret) as ro:
        cookie_file = ro / "cookies.txt"
        with pytest.raises(OSError):
            cookie_file.write_text("x")  # the mount really is read-only
        before = (hashlib.sha256(cookie_file.read_bytes()).hexdigest(), cookie_file.stat().st_mtime_ns)
        cfg = PreprocessConfig(
            clip=ClipSpec(clip_seconds=3.0, frame_size=32),
            download=DownloadConfig(cookies=str(cookie_file), socket_timeout=2.0, max_attempts=1),
            shard_size=6,
            threads_per_task=3,
        )
        with RangeServer(served, host=COOKIE_HOST, port=80) as server:
            tasks = [ClipTask(key=f"c{i}", source=server.url(f"c{i}.mp4"), start=1.0) for i in range(6)]
            stats = process_shard("00000", tasks, cfg, {}, str(tmp_path / "out"))
            log = list(server.log)
        after = (hashlib.sha256(cookie_file.read_bytes()).hexdigest(), cookie_file.stat().st_mtime_ns)
    assert [f.message for f in stats.failures] == [] and stats.successes == 6
    assert before == after
    media = [r for r in log if r["headers"].get("Range")]  # ffmpeg's section reads
    assert {r["path"] for r in media} == {f"c{i}.mp4" for i in range(6)}
    assert all("SID=secret-session-42" in r["headers"].get("Cookie", "") for r in log), [
        r["headers"].get("Cookie") for r in log
    ]
    assert not any("LOGIN_INFO" in r["headers"].get("Cookie", "") for r in log)  # other domains' stay home


@pytest.mark.slow
def test_http_proxy_carries_all_media_traffic(tmp_path, served):
    with RangeServer(served) as server, HttpProxy() as proxy:
        cfg = DownloadConfig(proxy=proxy.url, socket_timeout=2.0, max_attempts=1)
        path, attempts, *_ = download_section(
            ClipTask(key="c1", source=server.url("c1.mp4"), start=1.0),
            ClipSpec(clip_seconds=3.0),
            cfg,
            tmp_path,
        )
        peers = set(server.bytes_by_peer)
        log_peers = {r["peer"][0] for r in server.log}
        served_bytes = sum(server.bytes_by_peer.values())
        ranged = [r for r in server.log if r["headers"].get("Range")]
    assert path.stat().st_size > 0 and ranged, "ffmpeg fetched the section"
    assert log_peers == {"127.0.0.2"}, log_peers  # every request came from the proxy
    assert {host for host, _ in peers} == {"127.0.0.2"}
    # The origin counts what it pushed into the proxy's socket, the proxy what it relayed
    # before ffmpeg hung up: both non-zero, and no other peer got a byte.
    assert proxy.bytes_in > 0 and served_bytes > 0
    assert any(target.endswith("/c1.mp4") for _, target in proxy.requests)


@pytest.mark.slow
def test_governor_spacing_is_measured_at_the_origin(tmp_path, served):
    """4 clips on 4 threads, granted 1.0-1.5 s apart by the governor: the origin's first
    request of each clip shows the spacing, give or take yt-dlp's start-up time (without
    a governor the 4 threads fetch at once)."""
    governor = Governor(GovernorConfig(min_spacing=1.0, jitter=0.5, per_node_per_hour=36000), seed=3)
    cfg = PreprocessConfig(
        clip=ClipSpec(clip_seconds=2.0, frame_size=32),
        download=DownloadConfig(socket_timeout=2.0, max_attempts=1),
        threads_per_task=4,
    )
    with RangeServer(served) as server:
        tasks = [ClipTask(key=f"c{i}", source=server.url(f"c{i}.mp4"), start=0.0) for i in range(4)]
        stats = process_shard("00000", tasks, cfg, {}, str(tmp_path / "out"), governor=governor)
        first = sorted(min(r["t"] for r in server.log if r["path"] == f"c{i}.mp4") for i in range(4))
    assert stats.successes == 4
    gaps = [b - a for a, b in zip(first, first[1:], strict=False)]
    assert min(gaps) >= 0.6 and sum(gaps) / len(gaps) >= 0.95, gaps
    assert governor.stats()["grants"] == 4


@pytest.mark.slow
def test_preprocess_refuses_socks_https_proxies_and_rate_limit_before_any_download(tmp_path, served, capsys):
    from jobs import preprocess

    csv = tmp_path / "vggsound.csv"
    csv.write_text("c0,0,dog,train\n")
    with RangeServer(served) as server:
        base = [str(csv), "--out", str(tmp_path / "out"), "--url-template", server.url("{id}.mp4")]
        assert preprocess.main([*base, "--proxy", "socks5://127.0.0.1:1080"]) == 2
        assert "socks5:// does not carry ffmpeg's media transfer" in capsys.readouterr().err
        assert preprocess.main([*base, "--proxy", "https://127.0.0.1:3129"]) == 2
        err = capsys.readouterr().err
        assert "https:// does not carry ffmpeg's media transfer" in err and len(err.strip().splitlines()) == 1
        assert preprocess.main([*base, "--rate-limit", "2M"]) == 2
        assert "--downloads-per-hour" in capsys.readouterr().err
        assert server.log == []  # nothing was fetched


@pytest.mark.slow
def test_preprocess_stops_before_downloading_youtube_without_a_solver(tmp_path, capsys):
    from jobs import preprocess

    csv = tmp_path / "vggsound.csv"
    csv.write_text("---g-f_I2yQ,1,people marching,test\n")
    runtime = f"deno:{tmp_path / 'no-deno'}"
    assert preprocess.main([str(csv), "--out", str(tmp_path / "out"), "--js-runtime", runtime]) == 2
    captured = capsys.readouterr()
    assert "JS runtime none" in captured.out
    (line,) = [x for x in captured.err.splitlines() if x.strip()]
    assert "pip install 'yt-dlp[default,deno]'" in line and "--allow-no-solver" in line
    assert not (tmp_path / "out").exists()  # stopped before anything was planned or fetched


@pytest.mark.slow
@pytest.mark.parametrize("fetch", ["pyav", "ffmpeg"])
@pytest.mark.parametrize("with_cookies", [False, True], ids=["plain", "cookies"])
@pytest.mark.parametrize("status, kind", [(403, "blocked_forbidden"), (429, "blocked_rate_limit")])
def test_a_media_host_refusing_the_transfer_is_named_as_the_block(
    tmp_path, served, fetch, with_cookies, status, kind
):
    """The media host's refusal names the block whichever fetch met it: PyAV's reader
    sees the status; ffmpeg runs quietly and says only "exited with code 8", so the media
    host's own answer is asked for (straight, or as the cookie relay saw it)."""
    cookies = None
    if with_cookies:
        cookies = tmp_path / "cookies.txt"
        cookies.write_text(COOKIES)
    cfg = DownloadConfig(
        cookies=str(cookies) if cookies else None, socket_timeout=2.0, max_attempts=1, fetch=fetch
    )
    (tmp_path / "work").mkdir()
    with RangeServer(served, host=COOKIE_HOST, port=80) as server:
        server.refuse_ranged(status, 100)
        task = ClipTask(key="c2", source=server.url("c2.mp4"), start=1.0)
        with pytest.raises(DownloadError) as exc:
            download_section(task, ClipSpec(), cfg, tmp_path / "work")
        ranged = [r for r in server.log if r["headers"].get("Range")]
    print(exc.value.kind, exc.value.message)
    assert exc.value.kind == kind and exc.value.transient
    assert f"media host answered HTTP Error {status}" in exc.value.message
    assert 1 <= len(ranged) <= 3  # ffmpeg's request, and at most one question per format


def _tls_pair(folder: Path, name: str, signer=None, client: bool = False) -> tuple[Path, Path, Any, Any]:
    """A certificate for 127.0.0.1 (``client``: for client authentication) and its key,
    signed by ``signer`` (cert, key) or by itself."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = signer if signer else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=signer is None, path_length=None), critical=True)
    )
    if client:
        usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
        builder = builder.add_extension(usage, critical=False)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path, cert, key


@pytest.mark.slow
def test_one_tls_context_per_setting_still_verifies_and_reads_a_renewed_client_certificate(tmp_path):
    """Every attempt's YoutubeDL shares one TLS context per setting (certifi's bundle is
    loaded once a process, not once a clip). At a loopback HTTPS origin that asks for a
    client certificate from its own CA: a verifying YoutubeDL refuses the origin's
    unknown certificate every time, also after one that does not verify was served (the
    setting is not shared), and a client certificate renewed on disk is read again."""
    import http.server
    import ssl
    import threading

    import yt_dlp

    from avfusion.download import _SSL_CONTEXTS, _recording_ydl

    ca_cert, ca_key = _tls_pair(tmp_path, "ca")[2:]
    server_cert, server_key, *_ = _tls_pair(tmp_path, "server", (ca_cert, ca_key))
    client_cert, client_key, *_ = _tls_pair(tmp_path, "client", (ca_cert, ca_key), client=True)
    served: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            served.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_cert, server_key)
    context.load_verify_locations(tmp_path / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_port}/"
    mine = {"client_certificate": str(client_cert), "client_certificate_key": str(client_key)}

    def get(path: str, **params) -> bool:
        with _recording_ydl()({"quiet": True, "socket_timeout": 5, **params}) as ydl:
            try:
                return ydl.urlopen(url + path).read() == b"ok"
            except yt_dlp.networking.exceptions.RequestError:
                return False

    try:
        assert not get("verifying-1", **mine)
        assert get("unverified-1", nocheckcertificate=True, **mine)
        assert get("unverified-2", nocheckcertificate=True, **mine)
        assert not get("verifying-2", **mine), "a verifying attempt got the unverified context"
        assert not get("no-client-cert", nocheckcertificate=True)
        # the client certificate replaced in place by one the origin's CA never signed, its
        # modification time kept (as cp -p or rsync -t leave it)
        held = len(_SSL_CONTEXTS)
        stranger = _tls_pair(tmp_path, "stranger", client=True)
        for path, new in ((client_cert, stranger[0]), (client_key, stranger[1])):
            st = os.stat(path)
            path.write_bytes(new.read_bytes())
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert not get("renewed", nocheckcertificate=True, **mine), "the old certificate was used"
        assert len(_SSL_CONTEXTS) == held, "a renewal replaces its setting's context"
    finally:
        server.shutdown()
        server.server_close()
    assert served == ["/unverified-1", "/unverified-2"]


@pytest.mark.slow
def test_cookies_youtube_calls_invalid_stop_the_job_with_one_line_and_start_no_further_clip(
    tmp_path, served, capsys, monkeypatch
):
    """yt-dlp's own warning, reported through its logger on the second clip's extraction
    (the YouTube extractor reports it after a request once the account's cookies are
    gone from the jar: extractor/youtube/_base.py), stops the job: exit 3, one STOPPED
    line that says to export the cookies again, the first clip kept, no later clip asked
    of the origin, and a re-run with fresh cookies completes."""
    import yt_dlp
    from yt_dlp.extractor.youtube._base import YoutubeBaseInfoExtractor

    from jobs import preprocess

    message = (  # as extractor/youtube/_base.py words it
        "[youtube] The provided YouTube account cookies are no longer valid. They have likely been rotated "
        "in the browser as a security measure. For tips on how to effectively export YouTube cookies, "
        f"refer to  {YoutubeBaseInfoExtractor._COOKIE_HOWTO_WIKI_URL} ."
    )
    extract = yt_dlp.YoutubeDL.extract_info

    def extract_and_warn(self, url, *args, **kwargs):
        if "c1.mp4" in url and rotated:
            self.report_warning(message, only_once=False)
        return extract(self, url, *args, **kwargs)

    rotated = True
    monkeypatch.setattr(yt_dlp.YoutubeDL, "extract_info", extract_and_warn)
    csv = tmp_path / "vggsound.csv"
    csv.write_text("".join(f"c{i},0,dog,train\n" for i in range(3)))
    cookies = tmp_path / "cookies.txt"
    cookies.write_text(COOKIES)
    out = tmp_path / "out"
    with RangeServer(served) as server:
        argv = [
            str(csv),
            "--out",
            str(out),
            "--url-template",
            server.url("{id}.mp4"),
            "--cookies",
            str(cookies),
        ]
        argv += ["--executor", "local", "--threads", "1", "--frame-size", "32"]
        assert preprocess.main(argv) == 3
        err = capsys.readouterr().err
        fetched = {r["path"] for r in server.log}
        stopped = [line for line in err.splitlines() if line.startswith("STOPPED:")]
        assert len(stopped) == 1 and "no longer valid" in stopped[0] and "export them again" in stopped[0], (
            err
        )
        assert "Traceback" not in err and "secret-session-42" not in err
        assert "c2.mp4" not in fetched and "c0.mp4" in fetched, fetched
        rotated = False  # the cookies exported again
        assert preprocess.main(argv) == 0
    assert json.loads((out / "manifest.json").read_text())["num_samples"] == 3
