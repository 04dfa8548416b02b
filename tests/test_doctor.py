"""`avfusion doctor` on this machine, with the JS runtime hidden, and against real
cookie files, a real S3 server and proxy URLs."""

import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from avfusion.doctor import (
    FAIL,
    OK,
    WARN,
    cookie_checks,
    ffmpeg_checks,
    ffmpeg_release,
    proxy_checks,
    pyav_check,
)
from avfusion.download import js_runtime_report

REPO = Path(__file__).resolve().parents[1]


def _doctor(python: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(env or os.environ)
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [python, "-m", "jobs.doctor", "--video-weights", "none", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
def test_yt_dlp_finds_a_supported_runtime_and_the_solver_in_our_venv():
    js = js_runtime_report()
    assert js["ok"] and js["supported"] and js["runtime"].startswith("deno ")
    assert Path(js["path"]).parent == Path(
        sysconfig.get_path("scripts")
    )  # the venv's deno wheel, no PATH setup
    assert js["solver"].startswith("yt-dlp-ejs ")


@pytest.mark.slow
def test_doctor_on_this_machine(tmp_path):
    result = _doctor(sys.executable, "--out", str(tmp_path / "shards"))
    lines = result.stdout.splitlines()
    by_name = {line[6:20].strip(): line[:4].strip() for line in lines if line[:4].strip() in (OK, WARN, FAIL)}
    assert result.returncode == 0, result.stdout + result.stderr
    assert {
        k: by_name[k]
        for k in ("ffmpeg", "ffmpeg proto", "ffmpeg opts", "section path", "pyav", "js solver", "output")
    } == dict.fromkeys(
        ("ffmpeg", "ffmpeg proto", "ffmpeg opts", "section path", "pyav", "js solver", "output"), OK
    )
    assert lines[-1] == "doctor: OK"


@pytest.mark.slow
def test_doctor_fails_when_the_js_runtime_is_hidden(tmp_path):
    """A venv whose scripts folder has no deno (same packages through a .pth) and a
    PATH without one: yt-dlp's own check finds no runtime and doctor FAILs."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "main.pth").write_text(sysconfig.get_path("purelib") + "\n")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env["PATH"] = "/usr/bin:/bin"
    assert not any(Path(p, "deno").exists() for p in env["PATH"].split(":"))
    result = _doctor(str(venv / "bin" / "python"), env=env)
    js_line = next(line for line in result.stdout.splitlines() if "js solver" in line)
    assert js_line.startswith(FAIL) and "runtime none" in js_line, result.stdout + result.stderr
    assert "pip install 'yt-dlp[default,deno]'" in result.stdout
    assert result.returncode == 1 and result.stdout.splitlines()[-1].startswith("doctor: FAIL")


@pytest.mark.parametrize(
    ("banner", "release"),
    [
        ("ffmpeg version 8.1 Copyright (c) 2000-2026 the FFmpeg developers", (8, 1, 0)),
        ("ffmpeg version 8.1.1", (8, 1, 1)),
        ("ffmpeg version 8.1-1ubuntu1 Copyright (c) 2000-2026", (8, 1, 0)),
        ("ffmpeg version n8.1 Copyright (c) 2000-2026", (8, 1, 0)),
        ("ffmpeg version 6.1.1-3ubuntu5 Copyright (c) 2000-2023", (6, 1, 1)),
        ("ffmpeg version 5.1.6-0+deb12u1 Copyright", (5, 1, 6)),
        ("ffmpeg version 4.4-static https://johnvansickle.com/ffmpeg/", (4, 4, 0)),
        ("ffmpeg version 7.0-full_build-www.gyan.dev Copyright", (7, 0, 0)),
        ("ffmpeg version n9.0.2-17-g2a571b6068-20260930 Copyright", (9, 0, 2)),  # a release branch
        ("ffmpeg version 8.10.1", (8, 10, 1)),
        ("ffmpeg version N-12345-gabc1234 Copyright", None),  # git master: no release
        ("ffmpeg version N-118000-g1234abcd-static https://johnvansickle.com/ffmpeg/", None),
        ("ffmpeg version 2024-04-01-git-7bf85d2d3a-full_build-www.gyan.dev", None),
        ("ffmpeg version git-2020-08-31-4a11a6f", None),
        ("ffmpeg version 8.1.git", None),
        ("ffmpeg version 81.0", (81, 0, 0)),  # not read as 8.1
        ("avconv version 8.1", None),
        ("", None),
    ],
)
def test_ffmpeg_release_from_the_banner(banner, release):
    assert ffmpeg_release(banner) == release


def test_pyav_line_names_the_libraries_pyav_loaded():
    import av

    check = pyav_check()
    major, minor, micro = av.library_versions["libavformat"]
    assert check.status == OK
    assert f"PyAV {av.__version__} " in check.detail and f"FFmpeg {av.ffmpeg_version_info} " in check.detail
    assert (
        f"libavformat {major}.{minor}.{micro}" in check.detail
        and "not the ffmpeg binary yt-dlp runs" in check.detail
    )


def _fake_ffmpeg(
    folder: Path, version: str, http_options: str = "-rw_timeout <int64> -request_size <int>"
) -> Path:
    """An ``ffmpeg`` that answers what doctor and yt-dlp ask with a chosen version banner."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "ffmpeg"
    exe.write_text(
        "#!/bin/sh\n"
        'case " $* " in\n'
        f'  *" -version "*|*" -bsfs "*) echo "ffmpeg version {version} Copyright (c) 2000-2026 the FFmpeg '
        'developers" ;;\n'
        '  *" -protocols "*) printf \'Supported file protocols:\\nInput:\\n  file\\n  http\\n  https\\n'
        "  tls\\nOutput:\\n  file\\n' ;;\n"
        f'  *" -h "*) echo "{http_options}" ;;\n'
        "esac\n"
    )
    exe.chmod(0o755)
    return exe


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "version", "wheel_version", "status", "says", "fix"),
    [
        (
            "path",
            "8.1-1ubuntu1",
            None,
            WARN,
            "; 8.1 breaks yt-dlp's section downloads (yt-dlp issue 16546",
            "pass --ffmpeg {wheel} to preprocess (the imageio-ffmpeg wheel's ffmpeg ",
        ),
        ("given", "n8.1.1", None, WARN, "(given with --ffmpeg); 8.1 breaks", "pass --ffmpeg {wheel} "),
        ("path", "8.1", "8.1.2", WARN, "issue 16546", "install an ffmpeg release other than 8.1"),
        (
            "path",
            "6.1.1-3ubuntu5",
            None,
            WARN,
            "(first on PATH), which shadows the imageio-ffmpeg wheel's ffmpeg ",
            "pass --ffmpeg {wheel} ",
        ),
        (
            "path",
            "N-12345-gabc1234",
            None,
            OK,
            "(first on PATH), which shadows the imageio-ffmpeg wheel's",
            "",
        ),
        ("path", "99.0", None, OK, "(first on PATH), which shadows the imageio-ffmpeg wheel's", ""),
        ("given", "6.1.1", None, OK, "at {exe} (given with --ffmpeg)", ""),
        ("none", None, None, OK, "at {wheel} (the imageio-ffmpeg wheel's)", ""),
        (
            "none",
            None,
            "8.1.2",
            WARN,
            "at {wheel} (the imageio-ffmpeg wheel's); 8.1 breaks",
            "other than 8.1",
        ),
    ],
)
def test_ffmpeg_line_names_the_binary_its_origin_and_a_release_that_breaks_sections(
    tmp_path, monkeypatch, where, version, wheel_version, status, says, fix
):
    """A fake ffmpeg first on PATH, given as --ffmpeg, or none on PATH; the wheel's
    binary is the installed one, or a fake 8.1 through imageio-ffmpeg's own override."""
    import imageio_ffmpeg

    if wheel_version:
        monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(_fake_ffmpeg(tmp_path / "wheel", wheel_version)))
    else:
        monkeypatch.delenv("IMAGEIO_FFMPEG_EXE", raising=False)
    wheel = imageio_ffmpeg.get_ffmpeg_exe()
    exe = _fake_ffmpeg(tmp_path / "bin", version) if version else None
    # PATH keeps /bin for the fake's sh, without the folder of any real ffmpeg.
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/bin" if where == "path" else "/bin")
    assert not Path("/bin/ffmpeg").exists()
    checks = ffmpeg_checks(str(exe) if where == "given" else None)
    line = checks[0]
    assert (line.name, line.status) == ("ffmpeg", status), line
    assert says.format(exe=exe, wheel=wheel) in line.detail, line
    if version:
        assert line.detail.startswith(f"yt-dlp runs ffmpeg {version} at {exe} "), line
    assert ("16546" in line.detail) == (status == WARN and "8.1" in (version or wheel_version or "")), line
    assert fix.format(wheel=wheel) in line.fix if fix else status == OK, line
    assert ("shadows" in line.detail) == (where == "path"), line
    assert line.detail.endswith(", a newer release") == (version == "6.1.1-3ubuntu5"), line
    # The fake answers as a usable ffmpeg: only the ffmpeg line tells the cases apart.
    assert [(c.name, c.status) for c in checks[1:]] == [
        ("ffmpeg proto", OK),
        ("ffmpeg opts", OK),
        ("section path", OK),
    ]


def _cookie_file(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    lines = ["# Netscape HTTP Cookie File"]
    lines += [f"{domain}\tTRUE\t/\tTRUE\t{expires}\t{name}\tvalue" for domain, name, expires in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cookie_checks_against_real_files(tmp_path):
    year = int(time.time()) + 365 * 86400
    good = _cookie_file(
        tmp_path / "good.txt",
        [(".youtube.com", "SID", year), (".youtube.com", "PREF", year), (".google.com", "NID", year)],
    )
    (check, folder) = cookie_checks(str(good))
    assert check.status == OK and "2 YouTube cookies, login SID" in check.detail, check
    assert folder.status == OK and "writable" in folder.detail and "not needed" in folder.detail

    expired = _cookie_file(tmp_path / "old.txt", [(".youtube.com", "SID", int(time.time()) - 86400)])
    assert cookie_checks(str(expired))[0].status == FAIL
    guest = _cookie_file(tmp_path / "guest.txt", [(".youtube.com", "PREF", year)])
    assert cookie_checks(str(guest))[0].status == WARN
    other = _cookie_file(tmp_path / "other.txt", [(".example.com", "SID", year)])
    assert cookie_checks(str(other))[0].status == FAIL
    (tmp_path / "junk.txt").write_text("this is not a cookie file\n\x00\x01")
    assert cookie_checks(str(tmp_path / "junk.txt"))[0].status == FAIL
    assert cookie_checks(str(tmp_path / "absent.txt"))[0].status == FAIL


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")
def test_cookie_folder_read_only_is_reported_as_not_needed(tmp_path):
    from tests.test_download_effects import read_only_mount

    folder = tmp_path / "secret"
    folder.mkdir()
    _cookie_file(folder / "cookies.txt", [(".youtube.com", "SID", int(time.time()) + 86400 * 30)])
    with read_only_mount(folder) as ro:
        check, where = cookie_checks(str(ro / "cookies.txt"))
    assert check.status == OK and where.status == OK and "read-only" in where.detail


def test_proxy_schemes_one_line_per_proxy_of_the_pool_and_no_password():
    (one,) = proxy_checks(("http://127.0.0.1:3128",))
    assert one.status == OK and "proxy 127.0.0.1:3128" in one.detail
    (none,) = proxy_checks(())
    assert none.status == OK and "own address" in none.detail
    pool = proxy_checks(
        (
            "http://u:pw-secret@127.0.0.1:3128",
            "socks5://127.0.0.1:1080",
            "https://127.0.0.1:3129",
            "HTTP://127.0.0.1:3130",  # ffmpeg reads the scheme case-sensitively
        )
    )
    assert [c.status for c in pool] == [OK, FAIL, FAIL, FAIL]
    assert "proxy 127.0.0.1:3128:" in pool[0].detail and all("pw-secret" not in c.line() for c in pool)
    assert all(" u@" not in c.line() for c in pool)  # a user name may be a provider's API key
    assert all("directly" in c.detail for c in pool[1:])
    assert "https://" in pool[2].detail and "HTTP://" in pool[3].detail


@pytest.mark.slow
def test_storage_check_heads_the_bucket_of_a_real_s3_server():
    from tests.s3_server import S3Server, clean_env

    server = S3Server().start()
    try:
        env = clean_env(server)
        subprocess.run(
            [sys.executable, "-c", "import fsspec; fsspec.filesystem('s3').mkdir('shards')"],
            env=env,
            check=True,
        )
        ok = _doctor(sys.executable, "--out", "s3://shards/vggsound", env=env)
        missing = _doctor(sys.executable, "--out", "s3://nobucket/vggsound", env=env)
    finally:
        server.stop()
    assert "OK    output        bucket shards at http://" in ok.stdout, ok.stdout + ok.stderr
    assert "FAIL  output" in missing.stdout and missing.returncode == 1, missing.stdout


@pytest.mark.slow
def test_doctor_runs_the_node_checks_on_every_node_of_a_real_cluster():
    from tests.ray_cluster import LocalCluster

    with LocalCluster(cpus_per_node=1, workers=1) as cluster:
        result = _doctor(sys.executable, "--address", cluster.address, env=cluster.env)
    out = result.stdout
    assert "[cluster]" in out and "2 alive nodes" in out, out + result.stderr[-3000:]
    groups = out.split("[node ")[1:]
    assert len(groups) == 2, out
    for group in groups:  # each node ran its own checks
        assert "OK    js solver" in group and "OK    section path" in group, group
    assert result.returncode == 0, out


def test_clients_line_says_which_youtube_clients_run_and_refuses_sabr_only():
    from avfusion.doctor import clients_check

    guest, account = clients_check(None, cookies=False), clients_check(None, cookies=True)
    assert guest.status == OK and "for a guest" in guest.detail and "web," not in guest.detail + ","
    assert account.status == OK and "with cookies" in account.detail
    given = clients_check(("tv_samsung",), cookies=False)
    assert given.status == OK and given.detail == "YouTube player clients tv_samsung (given)"
    assert clients_check(("web",), cookies=False).status == FAIL


@pytest.mark.slow
def test_an_ffmpeg_without_request_size_gets_open_ended_ranges_and_a_warning(tmp_path):
    """ffmpeg before 8.0 refuses ``-request_size``: downloads must not pass it (every
    clip would fail), and doctor says what is lost. The wheel's ffmpeg gets it."""
    from avfusion.download import DownloadConfig, ydl_options

    old = _fake_ffmpeg(tmp_path / "old", "7.1.1", http_options="-rw_timeout <int64> -seekable <boolean>")
    checks = {c.name: c for c in ffmpeg_checks(str(old))}
    assert checks["ffmpeg opts"].status == WARN, checks["ffmpeg opts"]
    assert "lacks -request_size: Range requests stay open-ended" in checks["ffmpeg opts"].detail

    def inputs(ffmpeg: str | None) -> list[str]:
        opts = ydl_options(DownloadConfig(ffmpeg=ffmpeg, fetch="ffmpeg"), 0.0, 10.0, tmp_path)
        return opts["external_downloader_args"]["ffmpeg_i"]

    assert "-request_size" not in inputs(str(old))
    import imageio_ffmpeg

    wheel = inputs(imageio_ffmpeg.get_ffmpeg_exe())
    assert wheel[wheel.index("-request_size") + 1] == str(1 << 20)
    unbounded = DownloadConfig(ffmpeg=imageio_ffmpeg.get_ffmpeg_exe(), request_size=None, fetch="ffmpeg")
    assert (
        "-request_size" not in ydl_options(unbounded, 0, 10, tmp_path)["external_downloader_args"]["ffmpeg_i"]
    )


@pytest.mark.slow  # a loopback provider
def test_po_token_provider_check_pings_it(tmp_path):
    """doctor --pot-provider: the provider answering /ping with the plugin's major is OK;
    another major is a WARN (the plugin refuses it); nothing listening, or a server that
    is not the provider, is a FAIL with the command that starts one."""
    from avfusion.doctor import pot_check
    from tests.pot_provider import PotProvider

    with PotProvider() as provider:
        ok = pot_check(provider.url + "/")
        assert provider.seen == [("GET", "/ping", None)]
    assert ok.status == OK and f"bgutil provider 2.0.2 at {provider.url} answers /ping" in ok.detail, ok
    with PotProvider(version="1.9.0") as old:
        assert pot_check(old.url).status == WARN
    with PotProvider(ping_body=b"<html>a web server</html>") as other:
        wrong = pot_check(other.url)
    assert wrong.status == FAIL and "no provider answers" in wrong.detail and "docker run" in wrong.fix
    for body in (b'{"version": null}', b"[" * 5000, b'["2.0.2"]'):
        with PotProvider(ping_body=body) as odd:
            assert pot_check(odd.url).status == FAIL, body[:20]
    bad = pot_check("http://TOKEN@127.0.0.1:4416")
    assert bad.status == FAIL and "TOKEN" not in bad.detail
    dead = pot_check(provider.url)  # stopped: nothing listens there now
    assert dead.status == FAIL and "Connection refused" in dead.detail, dead


@pytest.mark.slow  # runs a fake ffmpeg
def test_an_ffmpeg_that_could_not_be_asked_is_asked_again(tmp_path):
    """A binary that cannot answer once (missing, timed out) lists no options that time,
    and is not remembered as lacking them."""
    from avfusion.download import ffmpeg_http_options

    exe = tmp_path / "bin" / "ffmpeg"
    assert ffmpeg_http_options(str(exe)) == frozenset()
    _fake_ffmpeg(exe.parent, "9.0.2")
    assert "request_size" in ffmpeg_http_options(str(exe))


def test_clients_line_names_mweb_when_a_pot_provider_needs_it():
    from avfusion.doctor import clients_check

    line = clients_check(None, False, "http://127.0.0.1:4416")
    assert line.status == OK and "mweb" in line.detail and "for the PO-token provider" in line.detail
    assert "mweb" not in clients_check(None, False).detail
