"""`avfusion doctor`: check what the jobs need before a long run, each line with its fix.

Node-local checks (``local_checks``: the ffmpeg yt-dlp runs and its section path, the
FFmpeg libraries PyAV decodes with, the JS runtime and challenge solver YouTube needs,
the cookies file, the proxy scheme, GPUs, the ImageNet weights file) run here, or on
every node of a Ray cluster (``--address``, one task per node through
``avfusion.executor.ray_doctor``: nodes differ). The output
URL's object store is checked once (credentials, endpoint, head of the bucket).
Each check is OK, WARN (works, but worse than it could) or FAIL (a job would fail).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass

OK, WARN, FAIL = "OK", "WARN", "FAIL"
YOUTUBE_LOGIN = ("SID", "__Secure-1PSID", "__Secure-3PSID", "LOGIN_INFO", "SAPISID")


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f"\n      fix: {self.fix}" if self.fix and self.status != OK else ""
        return f"{self.status:<4}  {self.name:<14}{self.detail}{fix}"


@dataclass(frozen=True)
class DoctorOptions:
    ffmpeg: str | None = None
    cookies: str | None = None
    proxies: tuple[str, ...] = ()  # the egress pool, as preprocess gets it
    js_runtimes: dict | None = None
    player_clients: tuple[str, ...] | None = None
    pot_provider: str | None = None  # a bgutil PO-token provider's base URL; None: skip
    weights: str | None = None  # "imagenet" (torch hub cache) or a path/URL; None: skip
    out: str | None = None
    address: str | None = None
    endpoint: str | None = None  # the object store's endpoint (AWS_ENDPOINT_URL), named in the report


def local_checks(opts: DoctorOptions) -> list[Check]:
    """Everything that depends on the machine it runs on."""
    checks = ffmpeg_checks(opts.ffmpeg) + [pyav_check(), js_check(opts.js_runtimes)]
    checks.append(clients_check(opts.player_clients, bool(opts.cookies), opts.pot_provider))
    if opts.cookies:
        checks += cookie_checks(opts.cookies)
    checks += proxy_checks(opts.proxies)
    if opts.pot_provider:
        checks.append(pot_check(opts.pot_provider))
    checks.append(gpu_check())
    if opts.weights:
        checks.append(weights_check(opts.weights))
    return checks


# ffmpeg releases (major, minor) whose section downloads fail, and why.
SECTIONS_BROKEN = {
    (8, 1): "8.1 breaks yt-dlp's section downloads (yt-dlp issue 16546: 403s, hangs, corrupt input)",
}
_RELEASE = re.compile(r"ffmpeg version n?(\d{1,2})\.(\d{1,2})(?:\.(\d{1,3}))?(?![\d.])")
_WHEEL = "the imageio-ffmpeg wheel's"


def ffmpeg_release(banner: str) -> tuple[int, int, int] | None:
    """The release named by ``ffmpeg -version``'s first line (``ffmpeg version 8.1-1ubuntu1 …``
    → (8, 1, 0)); None for builds from git (``N-12345-gabc``) or dated snapshots, which name none."""
    m = _RELEASE.match(banner.strip())
    return (int(m[1]), int(m[2]), int(m[3] or 0)) if m else None


def ffmpeg_checks(configured: str | None = None) -> list[Check]:
    """The binary yt-dlp will be handed and where it comes from, what sections need of it
    (a release that does not break them, https/tls inputs, ``-rw_timeout``,
    ``-request_size``), and that yt-dlp takes its section path."""
    from avfusion.download import ffmpeg_executable

    fix = (
        "install ffmpeg >= 4.4 with TLS (apt install ffmpeg), or pip install imageio-ffmpeg, "
        "or pass --ffmpeg PATH"
    )
    try:
        exe = ffmpeg_executable(configured)
        banner = _ffmpeg_banner(exe)
    except (OSError, subprocess.SubprocessError, IndexError, ImportError) as exc:
        return [Check("ffmpeg", FAIL, f"not runnable: {exc}", fix)]
    if configured:
        origin = "given with --ffmpeg"
    elif exe == shutil.which("ffmpeg"):
        origin = "first on PATH"
    else:
        origin = _WHEEL
    checks = [_release_check(exe, banner, origin)]
    protocols = _run([exe, "-hide_banner", "-protocols"]).split("Output:")[0].split()
    missing = [p for p in ("http", "https", "tls") if p not in protocols]
    checks.append(
        Check(
            "ffmpeg proto",
            FAIL if missing else OK,
            f"missing input protocols: {', '.join(missing)}" if missing else "http, https, tls inputs",
            fix,
        )
    )
    options = _run([exe, "-hide_banner", "-h", "protocol=http"]) + _run([exe, "-hide_banner", "-h", "full"])
    why = {
        "rw_timeout": "a stalled transfer would hang",
        "request_size": "Range requests stay open-ended, which YouTube throttles (8.0+ has it)",
    }
    lacking = [o for o in why if f"-{o}" not in options]
    checks.append(
        Check(
            "ffmpeg opts",
            FAIL if "rw_timeout" in lacking else WARN if lacking else OK,
            "; ".join(f"lacks -{o}: {why[o]}" for o in lacking) or "-rw_timeout, -request_size",
            fix,
        )
    )
    checks.append(_section_path_check(exe))
    return checks


def _release_check(exe: str, banner: str, origin: str) -> Check:
    """The ffmpeg line: which binary, from where; WARN on a release that breaks sections,
    or when PATH's ffmpeg is older than the imageio-ffmpeg wheel's it shadows."""
    release = ffmpeg_release(banner)
    detail = f"yt-dlp runs {_short(banner)} at {exe} ({origin})"
    wheel, wheel_banner = _wheel_ffmpeg(exe) if origin != _WHEEL else (None, None)
    wheel_release = ffmpeg_release(wheel_banner) if wheel_banner else None
    wheel_fine = wheel_banner is not None and (wheel_release or (0, 0))[:2] not in SECTIONS_BROKEN
    use_wheel = f"pass --ffmpeg {wheel} to preprocess ({_WHEEL} {_short(wheel_banner or '')})"
    shadows = origin == "first on PATH" and wheel_banner is not None
    if shadows:
        detail += f", which shadows {_WHEEL} {_short(wheel_banner or '')}"
    if release and release[:2] in SECTIONS_BROKEN:
        return Check(
            "ffmpeg",
            WARN,
            f"{detail}; {SECTIONS_BROKEN[release[:2]]}",
            use_wheel
            if wheel_fine
            else f"install an ffmpeg release other than {release[0]}.{release[1]} and "
            "pass --ffmpeg PATH to preprocess",
        )
    if shadows and wheel_fine and release and wheel_release and release < wheel_release:
        return Check("ffmpeg", WARN, f"{detail}, a newer release", use_wheel)
    return Check("ffmpeg", OK, detail)


def _short(banner: str) -> str:
    return banner.replace("ffmpeg version ", "ffmpeg ", 1)


def _ffmpeg_banner(exe: str) -> str:
    """``ffmpeg version …`` without the copyright; raises when ``exe`` cannot run."""
    return _run([exe, "-hide_banner", "-version"]).splitlines()[0].split(" Copyright")[0]


def _wheel_ffmpeg(exe: str) -> tuple[str | None, str | None]:
    """The imageio-ffmpeg wheel's binary and its banner, when it is another file than ``exe``
    and runs; (path or None, None) otherwise."""
    try:
        import imageio_ffmpeg

        wheel = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):  # not installed, or no binary for this platform
        return None, None
    if os.path.realpath(wheel) == os.path.realpath(exe):
        return wheel, None
    try:
        return wheel, _ffmpeg_banner(wheel)
    except (OSError, subprocess.SubprocessError, IndexError):
        return wheel, None


def _section_path_check(exe: str) -> Check:
    from avfusion.download import sections_use_ffmpeg

    available = sections_use_ffmpeg(exe)
    return Check(
        "section path",
        OK if available else FAIL,
        "yt-dlp hands section downloads to this ffmpeg"
        if available
        else "yt-dlp would not use ffmpeg: every section download fails ('ffmpeg is not installed')",
        "pass --ffmpeg PATH of a working ffmpeg binary",
    )


def pyav_check() -> Check:
    """The FFmpeg libraries PyAV reads windows and decodes clips with: its own, not the
    binary yt-dlp runs (which fetches only with ``--fetch ffmpeg`` and for HLS/DASH
    fragment formats). PyAV's demuxers read bytes from yt-dlp's requests, never through
    libavformat's HTTP client, so an FFmpeg 8.1 in the wheel does not matter here."""
    try:
        import av
    except ImportError as exc:
        return Check("pyav", FAIL, f"not importable: {exc}", "pip install av")
    libs = av.library_versions
    named = ", ".join(
        f"{lib} {'.'.join(map(str, libs[lib]))}" for lib in ("libavformat", "libavcodec") if lib in libs
    )
    return Check(
        "pyav",
        OK,
        f"PyAV {av.__version__} reads windows (--fetch pyav, the default) and decodes clips with "
        f"FFmpeg {getattr(av, 'ffmpeg_version_info', '?')} libraries ({named}), not the ffmpeg "
        "binary yt-dlp runs (--fetch ffmpeg, and HLS/DASH fragment formats)",
    )


def js_check(js_runtimes: dict | None = None) -> Check:
    from avfusion.download import js_runtime_report

    js = js_runtime_report(js_runtimes)
    detail = (
        f"runtime {js['runtime'] or 'none'} ({js['path'] or 'not found'}"
        f"{'' if js['supported'] or not js['runtime'] else ', unsupported version'}), "
        f"solver {js['solver'] or 'none'}; yt-dlp {js['yt_dlp']}"
    )
    return Check(
        "js solver",
        OK if js["ok"] else FAIL,
        detail,
        "pip install 'yt-dlp[default,deno]' into this environment (YouTube's challenges need a JS "
        "runtime since yt-dlp 2025.11.12; without one formats go missing)",
    )


def cookie_checks(url: str) -> list[Check]:
    """Readable, parseable (on a private copy: yt-dlp's jar is what we check), how many
    YouTube cookies, login cookies present, expiry; whether its folder is writable.
    Malformed lines are dropped before yt-dlp reads the copy (it would print them, value
    and all) and make the check WARN by line number; no cookie value is ever printed."""
    from yt_dlp.cookies import YoutubeDLCookieJar

    from avfusion import storage
    from avfusion.download import sanitise_cookies
    from avfusion.redact import Redactor, cookie_values

    fix = (
        "export cookies.txt from a private window of a throwaway account (yt-dlp wiki, 'Exporting "
        "YouTube cookies'), then close that window"
    )
    with contextlib.ExitStack() as stack:
        try:
            copy = stack.enter_context(storage.private_copy(url, "cookies.txt"))
        except Exception as exc:  # noqa: BLE001 - any reason the file cannot be read
            return [Check("cookies", FAIL, f"{url} not readable: {type(exc).__name__}: {exc}", fix)]
        try:
            text = storage.read_text(copy)
        except UnicodeDecodeError as exc:
            return [
                Check(
                    "cookies",
                    FAIL,
                    f"{url} is not a Netscape cookies.txt: not UTF-8 text ({exc.reason})",
                    fix,
                )
            ]
        redact = Redactor(cookie_values(text))
        sanitised, problems = sanitise_cookies(text)
        storage.write_text(copy, sanitised)
        jar = YoutubeDLCookieJar(copy)
        try:
            jar.load()
        except Exception as exc:  # noqa: BLE001 - http.cookiejar.LoadError and friends
            return [Check("cookies", FAIL, redact(f"{url} is not a Netscape cookies.txt: {exc}"), fix)]
    yt = [c for c in jar if c.domain.lstrip(".").endswith("youtube.com")]
    login = sorted({c.name for c in yt} & set(YOUTUBE_LOGIN))
    expiries = [c.expires for c in yt if c.expires]
    now = time.time()
    if not yt:
        status, detail = FAIL, f"{len(list(jar))} cookies, none for youtube.com"
    elif not login:
        status, detail = (
            WARN,
            f"{len(yt)} YouTube cookies but no login cookie ({', '.join(YOUTUBE_LOGIN[:3])}…)",
        )
    else:
        soonest = min(expiries) if expiries else None
        status = FAIL if soonest and soonest < now else WARN if soonest and soonest < now + 7 * 86400 else OK
        when = time.strftime("%Y-%m-%d", time.gmtime(soonest)) if soonest else "session only"
        detail = f"{len(yt)} YouTube cookies, login {', '.join(login)}; first expiry {when}"
    if problems:
        status = FAIL if status == FAIL else WARN
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        detail += f"; {len(problems)} malformed line(s) skipped: {problems[0]}{more}"
    checks = [Check("cookies", status, detail, fix)]
    if storage.is_local(url):
        folder = os.path.dirname(os.path.abspath(storage.local_path(url)))
        writable = os.access(folder, os.W_OK)
        checks.append(
            Check(
                "cookies dir",
                OK,
                f"{folder} is {'writable' if writable else 'read-only'}; "
                "not needed: each download works on a private copy",
            )
        )
    return checks


def clients_check(clients: tuple[str, ...] | None, cookies: bool, pot_provider: str | None = None) -> Check:
    """The YouTube player clients yt-dlp will ask, and whose choice they are."""
    from avfusion.config import ConfigError
    from avfusion.download import DownloadConfig, player_clients

    try:
        cfg = DownloadConfig(
            player_clients=clients, cookies="cookies.txt" if cookies else None, pot_provider=pot_provider
        )
    except ConfigError as exc:
        return Check("clients", FAIL, str(exc), "pass --player-clients with clients from the allowed list")
    whose = (
        "given"
        if clients
        else f"yt-dlp's defaults {'with cookies' if cookies else 'for a guest'}, less SABR-only"
        + (", with mweb for the PO-token provider" if pot_provider and "mweb" in player_clients(cfg) else "")
    )
    return Check("clients", OK, f"YouTube player clients {', '.join(player_clients(cfg))} ({whose})")


def pot_check(base_url: str) -> Check:
    """The PO-token provider: the yt-dlp plugin that asks it is installed, and the
    provider answers ``GET /ping`` (as the plugin first asks, never through a proxy) with
    a version whose major the plugin accepts (it refuses another major)."""
    import http.client
    import json
    from importlib import metadata
    from urllib.parse import urlsplit

    from avfusion.download import pot_provider_problem

    problem = pot_provider_problem(base_url)
    if problem:
        return Check("po token", FAIL, problem.split(": ", 1)[1], "pass the URL the provider listens on")
    base = base_url.rstrip("/")
    try:
        plugin = metadata.version("bgutil-ytdlp-pot-provider")
    except metadata.PackageNotFoundError:
        return Check(
            "po token", FAIL, "the bgutil yt-dlp plugin is not installed", "pip install 'avfusion[pot]'"
        )
    fix = f"start the provider (e.g. docker run -p 4416:4416 brainicism/bgutil-ytdlp-pot-provider:{plugin})"
    parts = urlsplit(base)
    connection = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    try:
        # A direct connection, as the plugin's (proxies={'all': None}), whatever the environment says.
        conn = connection(parts.hostname or "", parts.port, timeout=5)
        try:
            conn.request("GET", f"{parts.path.rstrip('/')}/ping")
            response = conn.getresponse()
            if response.status != 200:
                raise ValueError(f"HTTP {response.status} {response.reason}")
            version = json.loads(response.read(1 << 16))["version"]
            if not isinstance(version, str) or not version:
                raise ValueError(f"no version in its answer ({version!r})")
        finally:
            conn.close()
    # refused, timed out, not HTTP, not its JSON (RecursionError: JSON nested past the stack)
    except (OSError, ValueError, KeyError, TypeError, RecursionError, http.client.HTTPException) as exc:
        return Check("po token", FAIL, f"no provider answers {base}/ping ({type(exc).__name__}: {exc})", fix)
    if version.split(".")[0] != plugin.split(".")[0]:
        return Check(
            "po token",
            WARN,
            f"provider {version} at {base}, plugin {plugin}: the plugin refuses another major",
            fix,
        )
    return Check("po token", OK, f"bgutil provider {version} at {base} answers /ping (plugin {plugin})")


def proxy_checks(proxies: tuple[str, ...]) -> list[Check]:
    """One line per proxy of the pool, named without its password."""
    from avfusion.download import egress_names

    if not proxies:
        return [Check("proxy", OK, "none: downloads go out from each node's own address")]
    checks = []
    for proxy, name in zip(proxies, egress_names(proxies), strict=True):
        scheme = proxy.split("://", 1)[0] if "://" in proxy else "http"
        if scheme == "http":  # ffmpeg reads the scheme case-sensitively: HTTP:// goes around it
            checks.append(Check("proxy", OK, f"{name}: http:// carries yt-dlp's requests and ffmpeg's media"))
            continue
        checks.append(
            Check(
                "proxy",
                FAIL,
                f"{name}: {scheme}:// does not carry ffmpeg's media transfer: the media would go out "
                "directly",
                "use an http:// proxy, in lower case (run privoxy or gost in front of a SOCKS or https:// "
                "proxy)",
            )
        )
    return checks


def gpu_check() -> Check:
    try:
        import torch
    except ImportError as exc:
        return Check("gpus", FAIL, f"torch not importable: {exc}", "pip install torch")
    from avfusion.device import cuda_problem

    problem = cuda_problem()
    if problem is not None:
        return Check(
            "gpus",
            WARN,
            f"CUDA unusable ({problem}): training and labelling run on CPU",
            "fine for preprocess; for training use a GPU node (driver ≥ the wheel's CUDA, "
            "CUDA_VISIBLE_DEVICES, the Ray GPU request)",
        )
    n = torch.cuda.device_count()
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(n))
    return Check("gpus", OK, f"{n} visible to torch: {names}")


def weights_check(weights: str, imagenet_url: str | None = None, timeout: float = 3.0) -> Check:
    """A weights file is there; for ``imagenet``: torch's hub cache holds torchvision's
    file with the hash its name promises, or else whether its host answers a TCP connect
    within ``timeout`` seconds (training downloads it). ``imagenet_url``: default torchvision's."""
    from avfusion import pretrained, storage

    if weights != "imagenet":
        ok = storage.exists(weights)
        return Check(
            "weights",
            OK if ok else FAIL,
            f"{weights} {'present' if ok else 'missing'}",
            "pass --video-weights PATH of a ResNet-18 state dict that exists, or imagenet",
        )
    url = imagenet_url or pretrained.imagenet_url()
    name = url.rsplit("/", 1)[-1]
    state = pretrained.cached(url)
    if state.status == "ok":
        return Check("weights", OK, f"ImageNet ResNet-18 cached at {state.file} (sha256 matches its name)")
    if state.status == "corrupt" and (state.sha256 or "").startswith("not a readable file"):
        return Check(
            "weights", FAIL, f"{state.file} is {state.sha256}", "remove it: training downloads it again"
        )
    if state.status == "corrupt":
        return Check(
            "weights",
            FAIL,
            f"{state.file} is corrupt: its sha256 does not start with {pretrained.hash_prefix(url)}, "
            "the hash in its name (training refuses it)",
            "delete it: training downloads it again",
        )
    unreachable = endpoint_unreachable(url, timeout)
    if unreachable is None:
        return Check("weights", OK, f"ImageNet ResNet-18 not cached: will download on first use ({url})")
    return Check(
        "weights",
        WARN,
        f"ImageNet ResNet-18 not cached and offline ({unreachable}): training starts from random weights",
        f"copy torchvision's {name} to {state.file} (TORCH_HOME sets the folder) "
        "or pass --video-weights PATH",
    )


def storage_check(out: str, endpoint: str | None = None) -> Check:
    """An object-store ``--out``: credentials found, endpoint answers, bucket exists.
    ``endpoint`` names where (botocore finds it itself); None: AWS's default."""
    from avfusion import storage

    if storage.is_local(out):
        folder = storage.local_path(out)
        while folder and not os.path.exists(folder):
            folder = os.path.dirname(folder)
        writable = os.access(folder or ".", os.W_OK)
        return Check(
            "output",
            OK if writable else FAIL,
            f"local {out} ({'writable' if writable else 'read-only'})",
            "choose a writable --out",
        )
    bucket = re.sub(r"^[a-z0-9]+://", "", out).split("/")[0]
    root = f"{storage.scheme(out)}://{bucket}"
    fix = "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or a profile) and AWS_ENDPOINT_URL for non-AWS stores"
    unreachable = endpoint_unreachable(endpoint) if endpoint else None
    if unreachable:
        return Check(
            "output",
            FAIL,
            f"endpoint {endpoint} unreachable ({unreachable}); bucket {bucket} not checked",
            "start the object store or fix AWS_ENDPOINT_URL (scheme, host and port)",
        )
    endpoint = endpoint or "AWS default"
    try:
        found = storage.exists(root)
    except Exception as exc:  # noqa: BLE001 - no credentials, endpoint down, denied
        return Check("output", FAIL, f"{root} at {endpoint}: {type(exc).__name__}: {str(exc)[:200]}", fix)
    return Check(
        "output",
        OK if found else FAIL,
        f"bucket {bucket} at {endpoint} {'answers' if found else 'does not exist'}",
        fix,
    )


def endpoint_unreachable(endpoint: str, timeout: float = 3.0) -> str | None:
    """Why a TCP connection to ``endpoint`` (an http(s) URL) fails within ``timeout``
    seconds, or None when it connects. Asked before any S3 call: botocore retries a
    refused connection for about a minute and s3fs then calls the bucket missing."""
    import socket
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        return f"not a URL: {exc}"
    if not host:
        return "no host in the URL"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout:g} s"
    except socket.gaierror as exc:
        return f"host {host} not found: {exc.strerror or exc}"
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or exc}"


def cluster_checks(address: str, opts: DoctorOptions) -> list[tuple[str, list[Check]]]:
    """A cluster line first, then the node-local checks of every alive node."""
    from avfusion.executor.ray_doctor import run_on_every_node

    cluster = run_on_every_node(address, local_checks, opts)
    groups = [
        (
            "cluster",
            [
                Check(
                    "ray",
                    OK if cluster.nodes else FAIL,
                    f"{len(cluster.nodes)} alive nodes at {address}: {cluster.resources}",
                    "start workers (ray start --address=HEAD) or fix --address",
                )
            ],
        )
    ]
    for node in cluster.nodes:
        groups.append(
            (
                node.label,
                node.result
                if node.error is None
                else [
                    Check(
                        "node",
                        FAIL,
                        f"checks did not run: {node.error}",
                        "see the node's Ray logs; is avfusion installed there?",
                    )
                ],
            )
        )
    return groups


def run(opts: DoctorOptions) -> tuple[list[tuple[str, list[Check]]], int]:
    """All checks, grouped by where they ran; exit status 1 when any FAILed."""
    groups: list[tuple[str, list[Check]]] = []
    if opts.address:
        groups += cluster_checks(opts.address, opts)
    else:
        groups.append(("this machine", local_checks(opts)))
    if opts.out:
        groups.append(("storage", [storage_check(opts.out, opts.endpoint)]))
    failed = any(c.status == FAIL for _, checks in groups for c in checks)
    return groups, 1 if failed else 0


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
