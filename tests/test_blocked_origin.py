"""A loopback origin that turns blocked (429 with Retry-After, then 403, then healthy)
under the real preprocess job: the governor pauses and resumes, no failure is
permanent, an over-long block stops the job cleanly, and re-runs end with exactly the
key set of an uninterrupted run."""

import json
import shutil
import time

import duckdb
import pytest
import webdataset as wds

from avfusion.synth import SynthSpec, write_clip
from jobs import preprocess
from jobs.bench.origin import RangeServer

IDS = [f"v{i}" for i in range(8)]
GOVERNOR = (
    "governor:\n  min_spacing: 0.05\n  jitter: 0.5\n  cooldown_start: 0.3\n  cooldown_max: 1.0\n"
    "  max_blocked: {max_blocked}\n  forbidden_streak: 2\n"
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    write_clip(root / "v0.mp4", SynthSpec(duration=4.0, fps=10, width=96, height=72))
    for i in IDS[1:]:
        shutil.copy(root / "v0.mp4", root / f"{i}.mp4")
    return root


def _run(tmp_path, server, out, max_blocked=60.0, extra=(), governor=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    csv = tmp_path / "vggsound.csv"
    csv.write_text("".join(f"{i},0,{'dog' if int(i[1:]) % 2 else 'cat'},train\n" for i in IDS))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "clip:\n  clip_seconds: 2.0\n  frame_size: 32\n"
        "download:\n  socket_timeout: 2.0\n  backoff_base: 0.05\n  max_attempts: 3\n"
        + (governor or GOVERNOR.format(max_blocked=max_blocked))
    )
    args = [
        str(csv),
        "--out",
        str(out),
        "--config",
        str(cfg),
        "--url-template",
        server.url("{id}.mp4"),
        "--shard-size",
        "2",
        "--threads",
        "2",
        "--concurrency",
        "2",
        *extra,
    ]
    return preprocess.main(args)


def _keys(out):
    return sorted(
        json.loads(s["json"])["key"]
        for s in wds.WebDataset(sorted(str(p) for p in out.glob("*.tar")), shardshuffle=False)
    )


def _failures(out):
    return duckdb.sql(f"SELECT key, kind, transient FROM '{out}/failures.parquet' ORDER BY key").fetchall()


def _timeline(server) -> str:
    """Compressed request log: runs of (status) with counts, e.g. 200x6 429x4 403x4 200x18."""
    runs: list[list] = []
    for r in server.log:
        status = r["status"] or 200
        if runs and runs[-1][0] == status:
            runs[-1][1] += 1
        else:
            runs.append([status, 1])
    t0 = server.log[0]["t"]
    return " ".join(f"{s}x{n}" for s, n in runs) + f" in {server.log[-1]['t'] - t0:.1f} s"


@pytest.mark.slow
def test_block_pauses_resumes_and_reruns_complete_the_key_set(tmp_path, served, ray_local, capsys):
    with RangeServer(served) as server:
        assert _run(tmp_path / "a", server, tmp_path / "clean") == 0
    expected = _keys(tmp_path / "clean")
    assert expected == [f"{i}_000000" for i in IDS]

    with RangeServer(served) as server:
        server.block(after=6, plan=[(429, 4), (403, 4)])
        code = _run(tmp_path / "b", server, tmp_path / "blocked")
        print("blocked run:", _timeline(server))
    manifest = json.loads((tmp_path / "blocked" / "manifest.json").read_text())
    downloads = manifest["downloads"]
    print("governor:", downloads)
    assert downloads["cooldowns"] >= 2 and downloads["probes"] >= 2 and downloads["blocked_seconds"] > 0.3
    assert set(downloads["blocks"]) <= {"blocked_rate_limit", "blocked_forbidden"} and downloads["blocks"]
    assert downloads["blocked_nodes"] == [] and downloads["stopped"] is None  # resumed by the end
    failures = _failures(tmp_path / "blocked")
    assert all(transient for _, _, transient in failures), failures  # no block is held against a clip
    assert code == 0 and manifest["complete"]
    if failures:  # clips whose attempts ran out during the block: --retry-failed redoes them
        with RangeServer(served) as server:
            assert _run(tmp_path / "b", server, tmp_path / "blocked", extra=["--retry-failed"]) == 0
    assert _keys(tmp_path / "blocked") == expected
    print(
        f"blocked run: {len(failures)} transient failures {sorted({k for _, k, _ in failures})}, "
        f"final keys {len(_keys(tmp_path / 'blocked'))}"
    )


@pytest.mark.slow
def test_an_over_long_block_stops_the_job_and_a_rerun_resumes_it(tmp_path, served, ray_local, capsys):
    out = tmp_path / "shards"
    with RangeServer(served) as server:
        server.block(after=9, plan=[(429, 10**6)])  # blocked for good after about three clips
        code = _run(tmp_path, server, out, max_blocked=2.0)
        timeline = _timeline(server)
    err = capsys.readouterr().err
    print("stopped run:", timeline)
    stop_line = next(line for line in err.splitlines() if line.startswith("STOPPED"))
    print(stop_line)
    assert (
        code == 3
        and "blocked_rate_limit" in stop_line
        and "Resume later with: avfusion preprocess" in stop_line
    )
    manifest = json.loads((out / "manifest.json").read_text())
    print("governor:", manifest["downloads"], "kept keys:", len(_keys(out)))
    assert manifest["complete"] is False and manifest["downloads"]["stopped"] == "blocked_rate_limit"
    kept = _keys(out)
    assert 0 < len(kept) < len(IDS), kept  # the finished shards are kept, the rest left undone
    assert all(transient for _, _, transient in _failures(out))
    stats_files = sorted(p.name for p in out.glob("*_stats.json"))
    assert len(stats_files) == manifest["num_shards"] < 4  # a stopped shard writes no stats

    with RangeServer(served) as server:  # the block lifted: the same command resumes
        assert _run(tmp_path, server, out) == 0
        redone = {r["path"] for r in server.log}
    done_before = {k.split("_")[0] + ".mp4" for k in kept}
    assert not (redone & done_before), "finished shards are not downloaded again"
    if _failures(out):
        with RangeServer(served) as server:
            assert _run(tmp_path, server, out, extra=["--retry-failed"]) == 0
    assert _keys(out) == [f"{i}_000000" for i in IDS]
    print(f"resumed: final keys {len(_keys(out))}")


@pytest.mark.slow
def test_max_blocked_holds_within_seconds_of_its_setting(tmp_path, served, ray_local, capsys):
    """--max-blocked 3 with the default cooldown (300 s): the job stops about 3 s after
    the first blocked answer, not when a waiting download next asks (a minute later)."""
    with RangeServer(served) as server:
        server.block(after=0, plan=[(429, 10**6)])
        code = _run(
            tmp_path,
            server,
            tmp_path / "out",
            governor="governor:\n  min_spacing: 0.05\n",
            extra=["--max-blocked", "3"],
        )
        ended = time.time()
        first_blocked = server.log[0]["t"]
    took = ended - first_blocked
    print(f"stopped {took:.1f} s after the first 429 (max_blocked 3)")
    assert code == 3 and "STOPPED" in capsys.readouterr().err
    assert took < 3 + 5, took


@pytest.mark.slow
def test_a_download_in_its_backoff_hears_the_stop(tmp_path, served):
    """A clip backing off a 500 for up to a minute while another node's block outlasts
    max_blocked: the clip's thread raises SourceBlocked within seconds, not after its
    backoff (its governor is only polled, nobody else asks it for a turn)."""
    import threading

    from avfusion.config import ClipSpec
    from avfusion.download import DownloadConfig
    from avfusion.governor import Governor, GovernorConfig, SourceBlocked
    from avfusion.preprocess.shard import PreprocessConfig, process_clip
    from avfusion.sources import ClipTask

    governor = Governor(GovernorConfig(min_spacing=0.0, max_blocked=1.0), seed=0)
    governor.acquire("other")
    cfg = PreprocessConfig(
        clip=ClipSpec(clip_seconds=2.0, frame_size=32),
        download=DownloadConfig(socket_timeout=2.0, max_attempts=3, backoff_base=60.0, backoff_max=60.0),
    )
    with RangeServer(served) as server:
        server.set_fault("v1.mp4", "500_then_ok", count=10)
        timer = threading.Timer(0.5, governor.report, args=("other", "blocked_session"))
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(SourceBlocked) as exc:
            process_clip(ClipTask(key="v1", source=server.url("v1.mp4")), cfg, {}, tmp_path, governor, "here")
        took = time.monotonic() - t0
        timer.join()
    assert exc.value.kind == "blocked_session" and server.requests["v1.mp4"] >= 1
    assert took < 1.5 + 3, took  # the block's start + max_blocked + a poll, not the 30-60 s backoff


@pytest.mark.slow
def test_a_streak_of_no_formats_across_clips_is_a_block_and_loses_no_clip(tmp_path, served, ray_local):
    """An origin that answers every video with a playlist of no streams for a while (real
    yt-dlp: "No video formats found!", as a blocked YouTube source says): the governor
    takes the streak across clips for a block and cools down, no clip is a permanent
    failure, and --retry-failed ends with the whole key set."""
    out = tmp_path / "shards"
    governor = GOVERNOR.format(max_blocked=60.0) + "  suspect_streak: 2\n"
    with RangeServer(served) as server:
        # From the first request: a success reported between two clips' answers rightly
        # ends a streak, and with four clips in flight when it began, one would.
        server.block(after=0, plan=[("no_formats", 8)])
        code = _run(tmp_path, server, out, governor=governor)
        print("no-formats run:", _timeline(server))
    downloads = json.loads((out / "manifest.json").read_text())["downloads"]
    failures = _failures(out)
    print("governor:", downloads, "failures:", failures)
    assert code == 0 and downloads["blocks"].get("no_format", 0) >= 1 and downloads["cooldowns"] >= 1
    assert all(transient for _, _, transient in failures), failures
    if failures:
        with RangeServer(served) as server:
            assert _run(tmp_path, server, out, governor=governor, extra=["--retry-failed"]) == 0
    assert _keys(out) == [f"{i}_000000" for i in IDS]


@pytest.mark.slow
@pytest.mark.parametrize("status, kind", [(403, "blocked_forbidden"), (429, "blocked_rate_limit")])
def test_a_media_host_that_refuses_only_the_transfer_is_a_block(tmp_path, served, ray_local, status, kind):
    """The extractor's request goes through, the media host refuses ffmpeg's ranged
    requests (ffmpeg, run quietly, says only "exited with code 8"): the refusal is asked
    for, named as the block it is, and cools the node down; nothing is lost."""
    out = tmp_path / "shards"
    with RangeServer(served) as server:
        server.refuse_ranged(status, 6)
        code = _run(tmp_path, server, out)
        print(f"{status} on ranged requests:", _timeline(server))
    downloads = json.loads((out / "manifest.json").read_text())["downloads"]
    failures = _failures(out)
    print("governor:", downloads, "failures:", failures)
    assert code == 0 and downloads["blocks"].get(kind, 0) >= 1 and downloads["cooldowns"] >= 1
    assert set(downloads["blocks"]) == {kind}, downloads["blocks"]
    assert all(transient and k == kind for _, k, transient in failures), failures
    if failures:
        with RangeServer(served) as server:
            assert _run(tmp_path, server, out, extra=["--retry-failed"]) == 0
    assert _keys(out) == [f"{i}_000000" for i in IDS]
