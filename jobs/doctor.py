"""`avfusion doctor`: check ffmpeg, the JS challenge solver, cookies, proxy, storage,
GPUs and weights (here, or on every node of a Ray cluster with --address).

Each line is OK, WARN or FAIL with the fix; the exit status is 1 when anything FAILs.
Run it with the same --cookies/--proxy/--out you give preprocess.
"""

from __future__ import annotations

import argparse
import os
import sys

from jobs import JobParser, refusing


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(prog="avfusion doctor", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("--cookies", help="cookies.txt as given to preprocess (a path or URL)")
    p.add_argument("--proxy", action="append", help="proxy URL as given to preprocess (repeatable)")
    p.add_argument("--proxies", metavar="FILE", help="proxy file as given to preprocess")
    p.add_argument("--out", help="output URL as given to preprocess (s3://bucket/... is head-checked)")
    p.add_argument("--ffmpeg", help="ffmpeg binary (default: PATH, then imageio-ffmpeg)")
    p.add_argument("--player-clients", metavar="A,B", help="YouTube player clients as given to preprocess")
    p.add_argument("--pot-provider", metavar="URL", help="PO-token provider as given to preprocess: ping it")
    p.add_argument(
        "--video-weights",
        default="imagenet",
        help="'imagenet' (torch hub cache), a path/URL, or 'none' to skip (default imagenet)",
    )
    p.add_argument("--address", help="Ray cluster address: run the node checks on every node")
    return p


@refusing("avfusion doctor")  # a flag it cannot use: one line, exit 2
def main(argv: list[str] | None = None) -> int:
    from urllib.parse import unquote

    from avfusion import storage
    from avfusion.config import ConfigError
    from avfusion.doctor import DoctorOptions, run
    from avfusion.download import COOKIES_MAX_BYTES
    from avfusion.redact import Redactor, cookie_values
    from jobs.preprocess import PROXY_PASSWORD_ENV, client_list, proxies_of, proxy_password

    args = build_parser().parse_args(argv)
    weights = None if args.video_weights == "none" else args.video_weights
    # Every printed line passes the secrets doctor is shown: it echoes what it checks.
    redactor = Redactor(
        [os.environ.get("AWS_SECRET_ACCESS_KEY") or "", os.environ.get(PROXY_PASSWORD_ENV) or ""]
    )
    try:
        proxies = proxies_of(args.proxy, args.proxies, (), os.environ)
    except (ConfigError, OSError) as exc:  # OSError: an unreadable --proxies
        print(f"avfusion doctor: {redactor(str(exc))}", file=sys.stderr)
        return 2
    for proxy in proxies:
        password = proxy_password(proxy)
        redactor.add(password, unquote(password or ""))
    if args.cookies:
        try:
            redactor.add(
                *cookie_values(storage.read_small(args.cookies, COOKIES_MAX_BYTES).decode("utf-8", "replace"))
            )
        except OSError:
            pass  # the cookies check reports an unreadable file itself
    opts = DoctorOptions(
        ffmpeg=args.ffmpeg,
        player_clients=client_list(args.player_clients),
        pot_provider=args.pot_provider,
        cookies=args.cookies,
        proxies=proxies,
        out=args.out,
        weights=weights,
        address=args.address,
        endpoint=os.environ.get("AWS_ENDPOINT_URL"),
    )
    groups, code = run(opts)
    for where, checks in groups:
        print(f"[{where}]")
        for check in checks:
            print(redactor(check.line()))
    print("doctor: " + ("FAIL: fix the lines marked FAIL before running a job" if code else "OK"))
    return code


if __name__ == "__main__":
    sys.exit(main())
