"""`avfusion demo`: the pipeline end to end on the bundled real sample set.

Runs on an embedded local Ray unless ``--address`` names a cluster. Stages that
exist so far: read the clip list (VGGSound format) and probe every clip in Ray
tasks; later stages (shards, training, robustness, Parquet labels) join as they land.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from avfusion import sample_data
from avfusion.sources import read_vggsound_csv
from jobs._ray import as_completed, ray_session


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avfusion demo", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (default out/demo)")
    p.add_argument("--address", help="Ray cluster address; default: embedded local Ray")
    p.add_argument("--num-cpus", type=int, help="CPUs for the embedded Ray (default: all)")
    return p


def _probe_task(path: str) -> dict:
    from avfusion.probe import MediaError, probe

    try:
        return {"ok": True, **probe(path).to_dict()}
    except MediaError as exc:
        return {"ok": False, "path": path, "error": exc.kind, "message": exc.message}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import ray

    rows = read_vggsound_csv(sample_data.labels_csv())
    paths = {r.key: str(sample_data.clips_dir() / f"{r.key}.mp4") for r in rows}
    args.out.mkdir(parents=True, exist_ok=True)
    with ray_session(args.address, args.num_cpus):
        probe_remote = ray.remote(num_cpus=1)(_probe_task)
        results = list(as_completed([probe_remote.remote(p) for p in paths.values()], "probe"))

    by_path = {r["path"]: r for r in results}
    table: dict[str, dict] = defaultdict(lambda: {"train": 0, "test": 0, "seconds": 0.0, "errors": 0})
    for row in rows:
        res, entry = by_path[paths[row.key]], table[row.label]
        entry[row.split] += 1
        entry["seconds"] += res.get("duration") or 0.0
        entry["errors"] += not res["ok"]
    (args.out / "probe.json").write_text(json.dumps(results, indent=1))

    print(f"\nSample set: {len(rows)} clips, {len(table)} classes ({sample_data.clips_dir()})")
    print(f"{'class':<28}{'train':>6}{'test':>6}{'seconds':>9}{'errors':>8}")
    for label, e in sorted(table.items()):
        print(f"{label:<28}{e['train']:>6}{e['test']:>6}{e['seconds']:>9.1f}{e['errors']:>8}")
    codecs = sorted({(r.get("video_codec"), r.get("audio_codec"), r.get("sample_rate")) for r in results})
    print(f"streams (video, audio, rate): {codecs}")
    print(f"probe results: {args.out / 'probe.json'}")
    failed = [r for r in results if not r["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
