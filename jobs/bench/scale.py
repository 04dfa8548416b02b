"""`avfusion bench scale`: the preprocess driver at VGGSound scale, without downloading.

A 2,000,000-row VGGSound CSV becomes 20,000 shards of 100 clips. The benchmark writes
what such a run leaves behind (the CSV and one ``NNNNN_stats.json`` per shard, ~20 %
of clips failed with the kinds and transient share yt-dlp gives on VGGSound today),
then runs the real driver, ``python -m jobs.preprocess CSV --out SHARDS``, as a user
would. Every shard is already finished, so no Ray task starts: what is measured is
exactly the driver's own work: read and validate the CSV, plan and digest the shards,
list and read the 20,000 stats files, build ``manifest.json`` and
``failures.parquet``. Its wall time and peak RSS (VmHWM) are printed, locally and on a
loopback S3 server (moto), with the target: under 60 s and 2 GB.

Floor (same run, measured the same way, a subprocess each): reading the same bytes
with no parsing: the CSV and every stats file, concatenated. The ratio driver/floor
says how much of the driver's time is its own logic rather than I/O.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from jobs.bench.common import print_table, python_cmd, run_measured

# Share of VGGSound clips that fail today and how, by (kind, transient): most are gone
# from YouTube for good; a few percent are transient (throttling, timeouts).
FAILURE_MIX = [
    (("unavailable", False), 0.09),
    (("private", False), 0.04),
    (("removed", False), 0.03),
    (("geo_blocked", False), 0.01),
    (("age_restricted", False), 0.005),
    (("bot_check", False), 0.005),
    (("rate_limited", True), 0.01),
    (("timeout", True), 0.005),
    (("decode_error", False), 0.005),
]
LABELS = [f"class {i:03d}" for i in range(309)]  # VGGSound has 309 classes


def make_csv(path: str, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    with open(path, "w") as f:
        for i in range(rows):
            yid = "".join(rng.choice(alphabet) for _ in range(10)) + alphabet[i % 64]
            label = LABELS[i % len(LABELS)]
            f.write(f'{yid},{(i * 7) % 300},"{label}, outdoors",{"test" if i % 13 == 0 else "train"}\n')


def stats_documents(csv_path: str, out: str, shard_size: int, seed: int = 0) -> Iterator[tuple[str, str]]:
    """(shard name, stats JSON) for each shard of the plan recorded in ``out``: the plan a
    run on one slot makes, written as its ``_plan.json`` (a resume reads the plan back)."""
    from avfusion.preprocess.plan import check_plan
    from avfusion.preprocess.shard import PreprocessConfig
    from avfusion.sources import read_vggsound_csv, tasks_from_vggsound

    tasks = tasks_from_vggsound(read_vggsound_csv(csv_path))
    shards = check_plan(out, tasks, PreprocessConfig(shard_size=shard_size))
    rng = random.Random(seed)
    kinds = [k for k, _ in FAILURE_MIX]
    weights = [w for _, w in FAILURE_MIX]
    fail_share = sum(weights)
    for shard, planned in shards.items():
        keys: list[str] = []
        failures: list[dict[str, Any]] = []
        by_split: dict[str | None, int] = {}
        for t in planned:
            if rng.random() < fail_share:
                kind, transient = rng.choices(kinds, weights)[0]
                failures.append(
                    {
                        "key": t.key,
                        "source": t.source,
                        "kind": kind,
                        "transient": transient,
                        "message": f"ERROR: [youtube] {t.key[:11]}: Video {kind.replace('_', ' ')}",
                        "attempts": 4 if transient else 1,
                        "label": t.label,
                    }
                )
            else:
                keys.append(t.key)
                by_split[t.split] = by_split.get(t.split, 0) + 1
        n = len(keys) + len(failures)
        yield (
            shard,
            json.dumps(
                {
                    "shard": shard,
                    "tar": f"{shard}.tar",
                    "attempted": n,
                    "successes": len(keys),
                    "failed": len(failures),
                    "bytes": len(keys) * 1_400_000,
                    "seconds": 300.0,
                    "round": 0,
                    "keys": keys,
                    "failures": failures,
                    "by_class": {},
                    "by_split": by_split,
                    "failures_by_kind": {},
                    "created": "2026-01-01T00:00:00+00:00",
                }
            ),
        )


def write_run(csv_path: str, out: str, shard_size: int) -> int:
    """The plan and the stats files a finished run leaves; returns how many stats."""
    from avfusion import storage

    storage.makedirs(out)
    docs = stats_documents(csv_path, out, shard_size)
    n = 0
    if storage.is_local(out):
        for shard, text in docs:
            with open(os.path.join(out, f"{shard}_stats.json"), "w") as f:
                f.write(text)
            n += 1
        return n
    fs, root = storage.filesystem(out)
    batch: dict[str, bytes] = {}
    for shard, text in docs:
        batch[f"{root}/{shard}_stats.json"] = text.encode()
        if len(batch) == 500:
            fs.pipe(batch)  # concurrent PUTs
            n += len(batch)
            batch = {}
    if batch:
        fs.pipe(batch)
        n += len(batch)
    return n


FLOOR = """
import sys
from avfusion import storage
csv, out = sys.argv[1], sys.argv[2]
total = len(storage.read_bytes(csv))
total += sum(len(b) for _, b in storage.read_many(storage.list_files(out, '*_stats.json')))
print(total)
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="avfusion bench scale", description=__doc__.split("\n\n")[0].split(": ", 1)[1]
    )
    p.add_argument("--rows", type=int, default=2_000_000, help="CSV rows (default 2,000,000: VGGSound-sized)")
    p.add_argument("--shard-size", type=int, default=100)
    p.add_argument("--where", default="local,s3", help="comma-separated: local, s3 (a loopback moto server)")
    p.add_argument("--workdir", help="keep generated files here (default: a temp dir)")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="avf-scale-", dir=args.workdir) as tmp:
        csv_path = os.path.join(tmp, "vggsound.csv")
        make_csv(csv_path, args.rows)
        for where in [w.strip() for w in args.where.split(",") if w.strip()]:
            env = dict(os.environ, OMP_NUM_THREADS="1")
            server = None
            if where == "s3":
                server, csv_url, out = _s3(env, csv_path)
            else:
                csv_url, out = csv_path, os.path.join(tmp, "shards")
            try:
                n = write_run(csv_url, out, args.shard_size)
                floor = run_measured([sys.executable, "-c", FLOOR, csv_url, out], env=env)
                driver = run_measured(
                    python_cmd(
                        "jobs.preprocess", csv_url, "--out", out, "--shard-size", str(args.shard_size)
                    ),
                    env=env,
                )
                manifest = _read_manifest(out)
                rows.append(
                    (
                        where,
                        args.rows,
                        n,
                        manifest["num_samples"],
                        driver.wall_seconds,
                        driver.max_rss_mb,
                        floor.wall_seconds,
                        floor.max_rss_mb,
                        driver.wall_seconds / floor.wall_seconds,
                    )
                )
            finally:
                if server is not None:
                    server.stop()
    print_table(
        f"preprocess driver, {args.rows:,} clips, all {args.rows // args.shard_size:,} shards finished "
        "(target: < 60 s, < 2048 MB)",
        rows,
        (
            "where",
            "clips",
            "stats files",
            "manifest samples",
            "driver s",
            "driver peak MB",
            "floor s",
            "floor peak MB",
            "driver/floor",
        ),
    )
    ok = all(r[4] < 60 and r[5] < 2048 for r in rows)
    print("within target" if ok else "OVER TARGET")
    return 0


def _s3(env: dict, csv_path: str):
    """A loopback moto server; ``env`` gets only the standard AWS variables for it."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    from avfusion import storage

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    aws = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
    }
    for k in [k for k in env if k.startswith("AWS_")]:
        del env[k]
    env.update(aws)
    os.environ.update(aws)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    storage.filesystem("s3://avf-scale")[0].mkdir("avf-scale")
    storage.publish_file(csv_path, "s3://avf-scale/vggsound.csv")
    return server, "s3://avf-scale/vggsound.csv", "s3://avf-scale/shards"


def _read_manifest(out: str) -> dict:
    from avfusion import storage

    return storage.read_json(storage.join(out, "manifest.json"))


if __name__ == "__main__":
    sys.exit(main())
