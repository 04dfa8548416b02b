"""A hostile or messy filesystem, an ``--out`` that is not ours, and URL lists naming
what they should not: every entry of a folder ends as exactly one row (label) or one
sample or failure (preprocess), no open can block a job, nothing we did not write is
touched, and every refusal is one line.

The corpus (``tests.corpus.make_hostile_folder``) is built at test time: a FIFO, a
socket, a character device (where the container allows ``mknod``), names that are not
UTF-8, a file behind a path over 4,096 bytes, a symlink loop, a dangling link, a
folder named like a video, a chmod-000 file and a file still being written. What root
cannot reproduce: permissions (root reads a chmod-000 file), so that case runs in a
subprocess with CAP_DAC_OVERRIDE dropped (``capsh``); an EIO from a failing disk needs
a faulty block device (device-mapper's ``error`` target) and is not reproduced here:
``storage.local_kind`` maps it to ``read_error`` by errno alone.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import duckdb
import pytest

from avfusion import checkpoint
from avfusion.config import ClipSpec
from avfusion.decode import DecodeLimits
from avfusion.executor import InProcessExecutor
from avfusion.model import FusionModel, ModelConfig
from avfusion.preprocess.run import PreprocessJob, run_preprocess
from avfusion.preprocess.shard import PreprocessConfig
from avfusion.sources import SourceError, read_url_list
from avfusion.synth import SynthSpec, write_clip
from jobs import label as label_job
from jobs import preprocess as preprocess_job
from tests.corpus import grow, make_hostile_folder

CLIP = {"sample_rate": 16000, "clip_seconds": 1.0, "num_frames": 2, "frame_size": 32}


@pytest.fixture
def tiny_checkpoint(tmp_path):
    cfg = ModelConfig(num_classes=3, embed_dim=16, audio_width=8, video_weights="none")
    path = str(tmp_path / "tiny.pt")
    checkpoint.save(
        {
            "model": FusionModel(cfg).state_dict(),
            "model_config": cfg.__dict__,
            "label_map": {"a": 0, "b": 1, "c": 2},
            "clip": CLIP,
        },
        path,
    )
    return path


@pytest.fixture
def hostile(tmp_path):
    """(folder, expected kinds by relative path bytes) with a file still growing while
    the test runs: its row or failure may be either, but there must be exactly one."""
    root = tmp_path / "in"
    expected = make_hostile_folder(root)
    video = write_clip(tmp_path / "source.mp4", SynthSpec(duration=2.0, width=64, height=64)).path
    stop = threading.Event()
    writer = threading.Thread(target=grow, args=(root / "growing.mp4", video.read_bytes(), stop))
    writer.start()
    while not (root / "growing.mp4").exists():
        time.sleep(0.01)
    expected[b"growing.mp4"] = "any"
    yield root, expected
    stop.set()
    writer.join()


def _check_rows(root: Path, rows: list[tuple[bytes, str | None, str | None]], expected: dict) -> None:
    """One row per entry, by exact path bytes; each error kind as expected; good files labelled."""
    base = os.fsencode(root) + b"/"
    by_path: dict[bytes, list] = {}
    for path_bytes, error, label in rows:
        by_path.setdefault(bytes(path_bytes), []).append((error, label))
    assert set(by_path) == {base + rel for rel in expected}, "every entry, nothing else, nothing lost"
    for rel, kind in expected.items():
        ((error, label),) = by_path[base + rel]  # exactly one row
        if kind == "any":
            continue
        assert error == kind, (rel, error)
        assert (label is not None) == (kind is None), (rel, label)


def _label_rows(out: Path) -> list:
    return duckdb.sql(
        f"SELECT path_bytes, error_class, predicted_label FROM read_parquet('{out}/part-*.parquet')"
    ).fetchall()


@pytest.mark.timeout(120)  # before the stat check, the FIFO's open blocked forever
def test_label_gives_every_hostile_entry_one_row_without_hanging(hostile, tiny_checkpoint, tmp_path, capsys):
    root, expected = hostile
    out = tmp_path / "labels"
    args = [str(root), str(out), "--checkpoint", tiny_checkpoint, "--executor", "local", "--list-skipped"]
    assert label_job.main(args) == 0
    printed = capsys.readouterr().out
    rows = _label_rows(out)
    _check_rows(root, rows, expected)
    displayed = {
        p for (p,) in duckdb.sql(f"SELECT path FROM read_parquet('{out}/part-*.parquet')").fetchall()
    }
    # The non-UTF-8 name and the file literally named like its display form: two rows,
    # the same text, told apart by path_bytes (and resume keeps them apart too).
    assert str(root / "caf\\xe9 latin-1.mp4") in displayed
    assert "files; " in printed and "path_too_long" in printed
    assert label_job.main(args) == 0
    again = capsys.readouterr().out
    done = int(again.split(" already labelled")[0].rsplit(", ", 1)[1])
    assert done >= len(expected) - 1, again  # all but the growing file, whose size changed
    assert len(_label_rows(out)) == len(rows) + (len(expected) - done)


@pytest.mark.timeout(120)
def test_a_list_file_naming_hostile_paths_gives_each_one_row(tmp_path, tiny_checkpoint):
    """A list file is bytes too: a line that is not UTF-8 names that exact file."""
    root = tmp_path / "in"
    expected = make_hostile_folder(root)
    base = os.fsencode(root) + b"/"
    listed = tmp_path / "list.txt"
    listed.write_bytes(b"".join(base + rel + b"\n" for rel in expected))
    out = tmp_path / "labels"
    assert (
        label_job.main([str(listed), str(out), "--checkpoint", tiny_checkpoint, "--executor", "local"]) == 0
    )
    _check_rows(root, _label_rows(out), expected)


@pytest.mark.timeout(120)
def test_preprocess_gives_every_hostile_entry_one_sample_or_failure(hostile, tmp_path, capsys):
    root, expected = hostile
    out = tmp_path / "shards"
    cfg = PreprocessConfig(
        clip=ClipSpec(**CLIP), limits=DecodeLimits(deadline_seconds=20.0), shard_size=4, threads_per_task=2
    )
    job = PreprocessJob(input=str(root), out=str(out), config=cfg)
    result = run_preprocess(job, InProcessExecutor(2))
    assert result.exit_code == 0
    failures = duckdb.sql(f"SELECT key, source, kind FROM read_parquet('{out}/failures.parquet')").fetchall()
    import json

    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    keys = [k for s in stats for k in s["keys"]]
    sources = {  # the stats keep each source exactly (JSON escapes what is not UTF-8)
        os.fsencode(f["source"]): f["kind"] for s in stats for f in s["failures"]
    }
    base = os.fsencode(root) + b"/"
    good = [rel for rel, kind in expected.items() if kind is None]
    bad = {rel: kind for rel, kind in expected.items() if kind not in (None, "any")}
    assert {base + rel: kind for rel, kind in bad.items()} == {
        s: k for s, k in sources.items() if s != base + b"growing.mp4"
    }
    assert len(keys) + len(sources) == len(expected), "every file a sample or a failure"
    assert len(keys) == len(set(keys)) >= len(good)  # the two café files: two keys
    assert len(failures) == len(sources)
    assert all(isinstance(k, str) and isinstance(s, str) for k, s, _ in failures)


def test_the_walk_reaches_any_depth_without_recursion_or_leaked_handles(tmp_path):
    """1,100 nested folders (past Python's recursion limit, and past PATH_MAX at the
    bottom): the file at the bottom is found, and every directory handle is closed."""
    from avfusion.sources import walk_folder

    depth, name = 1100, b"dddd"
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    chain = [fd]
    try:
        for i in range(depth):
            os.mkdir(name, dir_fd=chain[-1])
            chain.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=chain[-1]))
            if i == 5:
                os.close(os.open(b"notes.txt", os.O_WRONLY | os.O_CREAT, dir_fd=chain[-1]))
        os.close(os.open(b"bottom.mp4", os.O_WRONLY | os.O_CREAT, dir_fd=chain[-1]))
        handles = len(os.listdir("/proc/self/fd"))
        found, skipped = walk_folder(str(tmp_path), (".mp4",))
        assert len(os.listdir("/proc/self/fd")) == handles
        (bottom,) = found
        assert bottom == os.path.join(str(tmp_path), *["dddd"] * depth, "bottom.mp4")
        assert len(os.fsencode(bottom)) > 4096
        assert skipped == [os.path.join(str(tmp_path), *["dddd"] * 6, "notes.txt")]
    finally:  # shutil.rmtree recurses per level: take the tree down from the bottom here
        os.unlink(b"bottom.mp4", dir_fd=chain[-1])
        while len(chain) > 1:
            os.close(chain.pop())
            if len(chain) == 7:
                os.unlink(b"notes.txt", dir_fd=chain[-1])
            os.rmdir(name, dir_fd=chain[-1])
        os.close(chain.pop())


# ----------------------------------------------------------------------------- --out is ours


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def clips(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        write_clip(folder / name, SynthSpec(duration=1.0, width=32, height=32))
    return folder


@pytest.fixture
def unrelated(tmp_path):
    """Someone's folder: notes, a tar that happens to be called 00000.tar, temp-looking files."""
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "00000.tar").write_bytes(b"my own tar")
    (folder / "backup.tmp-12345678").write_bytes(b"keep")
    (folder / ".editor.swp.tmp-1").write_bytes(b"keep")
    return folder


def test_preprocess_refuses_an_unrelated_out_and_with_force_touches_only_our_names(clips, unrelated, capsys):
    before = _snapshot(unrelated)
    args = [str(clips), "--out", str(unrelated), "--executor", "local", "--frame-size", "32"]
    assert preprocess_job.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds files this job did not write" in err and "--force" in err
    assert "notes.txt" in err
    assert _snapshot(unrelated) == before, "a refused run changes nothing"

    (unrelated / ".00000_stats.json.tmp-0badcafe").write_bytes(b"our temp name: a killed run's leftover")
    assert preprocess_job.main(args + ["--force"]) == 0
    after = _snapshot(unrelated)
    for name in ("notes.txt", "backup.tmp-12345678", ".editor.swp.tmp-1"):
        assert after[name] == before[name], name
    assert ".00000_stats.json.tmp-0badcafe" not in after  # only what we name is cleaned up
    assert after["00000.tar"] != before["00000.tar"]  # --force: a file with our name is ours
    assert ".avfusion-shards" in after
    assert preprocess_job.main(args) == 0  # marked: a re-run resumes without --force


def test_label_refuses_an_unrelated_out_and_with_force_leaves_its_files(
    clips, unrelated, tiny_checkpoint, capsys
):
    before = _snapshot(unrelated)
    args = [str(clips), str(unrelated), "--checkpoint", tiny_checkpoint, "--executor", "local"]
    assert label_job.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds files this job did not write" in err
    assert _snapshot(unrelated) == before
    (unrelated / ".part-0badcafe-00000.parquet.tmp-12345678").write_bytes(b"killed mid-write")
    assert label_job.main(args + ["--force"]) == 0
    after = _snapshot(unrelated)
    assert {n: after[n] for n in before} == before
    assert ".part-0badcafe-00000.parquet.tmp-12345678" not in after
    assert len(list(unrelated.glob("part-*.parquet"))) == 1


def test_an_out_that_is_a_file_is_one_line(clips, tmp_path, tiny_checkpoint, capsys):
    target = tmp_path / "a-file"
    target.write_text("x")
    assert preprocess_job.main([str(clips), "--out", str(target), "--executor", "local"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"avfusion preprocess: output folder {target} is a file, not a folder"
    )
    args = [str(clips), str(target), "--checkpoint", tiny_checkpoint, "--executor", "local"]
    assert label_job.main(args) == 2
    assert (
        capsys.readouterr().err.strip() == f"avfusion label: output folder {target} is a file, not a folder"
    )
    assert target.read_text() == "x"


# ----------------------------------------------------------------------------- URL lists


def _url_list(path: Path, urls: list[str]) -> Path:
    path.write_text("url\n" + "".join(f"{u}\n" for u in urls))
    return path


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("ftp://example.com/a.mp4", "scheme ftp:"),
        ("ftp://user:hunter2@example.com/a.mp4", "'ftp://example.com/a.mp4' has scheme ftp:"),
        ("javascript:alert(1)", "scheme javascript:"),
        ("file:///etc/passwd", "is a file:// URL"),
        ("/etc/passwd", "is a local path"),
        ("gopher://x/y", "scheme gopher:"),
    ],
)
def test_a_url_list_names_web_and_object_store_urls_only(tmp_path, url, named):
    listed = _url_list(tmp_path / "urls.csv", ["https://example.com/v", url, "s3://bucket/k.mp4"])
    with pytest.raises(SourceError, match="row 2") as refused:
        read_url_list(str(listed))
    assert named in str(refused.value) and "\n" not in str(refused.value)
    assert "hunter2" not in str(refused.value)


def test_local_paths_only_with_the_flag(tmp_path, clips, capsys):
    local = clips / "a.mp4"
    listed = _url_list(tmp_path / "urls.csv", [f"file://{local}", str(clips / "b.mp4")])
    assert [t.source for t in read_url_list(str(listed), allow_local_paths=True)] == [
        str(local),
        str(clips / "b.mp4"),
    ]
    args = [str(listed), "--out", str(tmp_path / "s"), "--executor", "local", "--frame-size", "32"]
    assert preprocess_job.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file:// URL" in err and "--allow-local-paths" in err and "\n" not in err
    assert not (tmp_path / "s").exists(), "refused before any work"
    assert preprocess_job.main(args + ["--allow-local-paths"]) == 0
    import json

    stats = json.loads((tmp_path / "s" / "00000_stats.json").read_text())
    assert stats["successes"] == 2 and not stats["failures"]


# ----------------------------------------------------------------------------- subprocesses


def _one_line(proc: subprocess.CompletedProcess, prefix: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(prefix), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_label_on_ray_gives_every_hostile_entry_one_row(hostile, tiny_checkpoint, tmp_path, cli_env):
    root, expected = hostile
    out = tmp_path / "labels"
    proc = subprocess.run(
        ["avfusion", "label", str(root), str(out), "--checkpoint", tiny_checkpoint, "--num-cpus", "2"]
        + ["--list-skipped"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_rows(root, _label_rows(out), expected)
    assert f"skipped: {root}/notes \\xff.txt" in proc.stdout  # printed escaped, not a crash


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("capsh") is None, reason="needs capsh to drop CAP_DAC_OVERRIDE")
def test_an_unreadable_file_is_one_row_when_permissions_bite(tmp_path, tiny_checkpoint, cli_env):
    """Root reads a chmod-000 file; without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH the
    job sees what a normal user sees."""
    root = tmp_path / "in"
    expected = make_hostile_folder(root, unreadable_bites=True)
    out = tmp_path / "labels"
    command = " ".join(
        ["avfusion", "label", str(root), str(out), "--checkpoint", tiny_checkpoint, "--executor", "local"]
    )
    proc = subprocess.run(
        ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", command],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_rows(root, _label_rows(out), expected)
    assert expected[b"locked.mp4"] == "unreadable"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare for a read-only bind mount")
def test_a_read_only_out_is_one_line(tmp_path, clips, tiny_checkpoint, cli_env):
    """A read-only bind mount in a private mount namespace: read-only even for root."""
    ro = tmp_path / "ro"
    ro.mkdir()
    for job in (
        f"avfusion preprocess {clips} --out {ro}/shards --executor local",
        f"avfusion label {clips} {ro}/labels --checkpoint {tiny_checkpoint} --executor local",
    ):
        script = f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro} && exec {job}"
        proc = subprocess.run(
            ["unshare", "-m", "sh", "-c", script], env=cli_env, capture_output=True, text=True, timeout=120
        )
        if "mount:" in proc.stderr:
            pytest.skip(f"no mount namespace here: {proc.stderr.strip()}")
        line = _one_line(proc, f"avfusion {job.split()[1]}: cannot write to output folder {ro}/")
        assert "Read-only file system" in line
    assert not list(ro.iterdir())


@pytest.mark.slow
def test_an_unreachable_object_store_out_is_one_line_within_seconds(tmp_path, clips, cli_env):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **cli_env,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    t0 = time.monotonic()
    proc = subprocess.run(
        ["avfusion", "preprocess", str(clips), "--out", "s3://bucket/shards", "--executor", "local"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - t0
    line = _one_line(proc, "avfusion preprocess: cannot write to output folder s3://bucket/shards: ")
    assert "Could not connect" in line and elapsed < 30, (line, elapsed)


# ----------------------------------------------------------------------------- --out: not by name alone


def test_a_folder_of_generic_names_without_proof_is_not_ours(clips, tmp_path, tiny_checkpoint, capsys):
    """``manifest.json`` and ``failures.parquet`` (or ``00000.tar``) are anyone's names:
    without the marker, a plan record or a shard's stats, the folder is refused."""
    webapp = tmp_path / "webapp"
    webapp.mkdir()
    (webapp / "manifest.json").write_text('{"name":"my pwa"}')
    (webapp / "failures.parquet").write_text("keep")
    (webapp / "00000.tar").write_bytes(b"my tar")
    before = _snapshot(webapp)
    assert preprocess_job.main([str(clips), "--out", str(webapp), "--executor", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds files this job did not write" in err and "manifest.json" in err
    assert _snapshot(webapp) == before, "byte-identical, no marker added"


def test_a_label_out_without_parts_or_marker_is_not_ours(clips, tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "labels"
    out.mkdir()
    (out / ".part-0badcafe-00000.parquet.tmp-12345678").write_bytes(b"a temp name alone proves nothing")
    before = _snapshot(out)
    assert label_job.main([str(clips), str(out), "--checkpoint", tiny_checkpoint, "--executor", "local"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "holds files this job did not write" in err
    assert _snapshot(out) == before


def test_a_shard_folder_from_before_the_marker_is_still_ours(clips, tmp_path, capsys):
    """A folder a run wrote before the marker existed: our names, with the plan record
    and a shard's stats as proof. It is resumed, and gets the marker."""
    out = tmp_path / "shards"
    args = [str(clips), "--out", str(out), "--executor", "local", "--frame-size", "32"]
    assert preprocess_job.main(args) == 0
    (out / ".avfusion-shards").unlink()
    assert {"_plan.json", "00000_stats.json"} <= {p.name for p in out.iterdir()}
    assert preprocess_job.main(args) == 0
    assert (out / ".avfusion-shards").exists()

    # stats alone (no plan record) are proof too
    (out / ".avfusion-shards").unlink()
    (out / "_plan.json").unlink()
    assert preprocess_job.main(args) == 0, capsys.readouterr().err


def test_a_label_folder_from_before_the_marker_is_still_ours(clips, tmp_path, tiny_checkpoint):
    out = tmp_path / "labels"
    args = [str(clips), str(out), "--checkpoint", tiny_checkpoint, "--executor", "local"]
    assert label_job.main(args) == 0
    (out / ".avfusion-labels").unlink()
    assert label_job.main(args) == 0
    assert (out / ".avfusion-labels").exists()


@pytest.mark.parametrize(
    ("out", "said"),
    [
        ("s3://", "names no bucket or host"),
        ("gs://", "names no bucket or host"),
        ("s3:///shards", "names no bucket or host"),
        ("memory://x", "would be lost when it ends"),
    ],
)
def test_an_out_url_naming_no_lasting_folder_is_one_line(clips, tmp_path, tiny_checkpoint, capsys, out, said):
    """``s3://`` once became a local folder named ``s3:`` (the trailing slashes
    stripped); ``memory://`` output vanished with the process."""
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert preprocess_job.main([str(clips), "--out", out, "--executor", "local"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("avfusion preprocess: output folder ") and said in err
        args = [str(clips), out, "--checkpoint", tiny_checkpoint, "--executor", "local"]
        assert label_job.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("avfusion label: output folder ") and said in err
    finally:
        os.chdir(cwd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clips", "tiny.pt"], "no local folder made"


def test_a_folder_named_like_our_temp_file_is_left_alone(clips, tmp_path, tiny_checkpoint):
    """Only a regular file (or a symlink, unlinked) is a temp file we wrote; a folder so
    named once made every run die with a traceback."""
    out = tmp_path / "shards"
    out.mkdir()
    (out / ".avfusion-shards").write_text("marker")
    (out / ".00000.tar.tmp-deadbeef").mkdir()
    (out / ".00000.tar.tmp-deadbeef" / "x").write_text("keep")
    (out / ".00000_stats.json.tmp-0badcafe").symlink_to(tmp_path / "clips")  # unlinked, not followed
    args = [str(clips), "--out", str(out), "--executor", "local", "--frame-size", "32"]
    assert preprocess_job.main(args) == 0
    assert (out / ".00000.tar.tmp-deadbeef" / "x").read_text() == "keep"
    assert not os.path.lexists(out / ".00000_stats.json.tmp-0badcafe")
    assert (tmp_path / "clips" / "a.mp4").exists()

    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / ".avfusion-labels").write_text("marker")
    (labels / ".part-0badcafe-00000.parquet.tmp-12345678").mkdir()
    args = [str(clips), str(labels), "--checkpoint", tiny_checkpoint, "--executor", "local"]
    assert label_job.main(args) == 0
    assert (labels / ".part-0badcafe-00000.parquet.tmp-12345678").is_dir()
