"""The label job on Ray Data and in-process (``--executor local``): Parquet read back
with DuckDB, the two executors' rows equal, odd files, kill and resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from avfusion import storage
from avfusion.checkpoint import model_from_checkpoint
from avfusion.config import ClipSpec
from avfusion.decode import decode_clip
from avfusion.labelling.schema import SCHEMA
from avfusion.labelling.worker import LABEL_LIMITS
from avfusion.model import attention_agrees
from avfusion.synth import SynthSpec, make_class_conditional_set
from jobs import label as label_job
from jobs import train as train_job
from tests.corpus import make_label_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, synthetic_shards):
    root = tmp_path_factory.mktemp("label_ckpt")
    (root / "t.yaml").write_text(
        "train:\n  model:\n    embed_dim: 32\n    audio_width: 8\n  workers: 0\n  batch_size: 8\n"
    )
    assert (
        train_job.main(
            [
                str(synthetic_shards),
                "--out",
                str(root),
                "--config",
                str(root / "t.yaml"),
                "--epochs",
                "1",
                "--steps-per-epoch",
                "2",
            ]
        )
        == 0
    )
    return root / "last.pt"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("label_clips")
    make_class_conditional_set(
        root, per_class=3, spec=SynthSpec(width=64, height=64, duration=2.0, fps=8, sample_rate=16_000)
    )
    return root


def _rows(out):
    return duckdb.sql(f"SELECT * FROM read_parquet('{out}/part-*.parquet')").fetchall(), [
        d[0] for d in duckdb.sql(f"SELECT * FROM read_parquet('{out}/part-*.parquet') LIMIT 0").description
    ]


def test_label_folder_matches_the_model_run_directly(tmp_path, clips, checkpoint, ray_local):
    out = tmp_path / "labels"
    assert label_job.main([str(clips), str(out), "--checkpoint", str(checkpoint), "--part-rows", "5"]) == 0
    con = duckdb.connect()
    table = f"read_parquet('{out}/part-*.parquet')"
    assert [d[0] for d in con.sql(f"SELECT * FROM {table} LIMIT 0").description] == SCHEMA.names
    assert con.execute(f"SELECT count(*), count(DISTINCT path) FROM {table}").fetchone() == (18, 18)
    assert con.execute(f"SELECT count(*) FROM {table} WHERE error_class IS NOT NULL").fetchone()[0] == 0
    assert con.execute(f"SELECT max(abs(w_audio + w_video - 1)) FROM {table}").fetchone()[0] < 1e-5
    assert con.execute(f"SELECT min(len(topk_labels)), max(len(topk_probs)) FROM {table}").fetchone() == (
        5,
        5,
    )
    assert len(list(out.glob("part-*.parquet"))) >= 2

    _assert_rows_equal_the_model(con, table, checkpoint, expect_rows=18)

    local = tmp_path / "labels_local"
    assert (
        label_job.main(
            [
                str(clips),
                str(local),
                "--checkpoint",
                str(checkpoint),
                "--part-rows",
                "5",
                "--executor",
                "local",
                "--concurrency",
                "2",
            ]
        )
        == 0
    )
    _assert_same_rows(out, local, expect_rows=18)


# What a row says about the file and its prediction (not where or when it was computed).
_COMPARED = (
    "path",
    "window_index",
    "window_count",
    "predicted_label",
    "class_index",
    "topk_labels",
    "flags",
    "attention_agrees",
    "audio_only_label",
    "video_only_label",
    "error_class",
    "model_id",
)
_CLOSE = ("confidence", "topk_probs", "w_audio", "w_video", "audio_only_confidence", "video_only_confidence")


def _assert_same_rows(a: Path, b: Path, expect_rows: int) -> None:
    """The two label outputs hold the same rows: predictions, attention, flags and
    errors equal, probabilities and weights within float noise."""

    def rows(out):
        return duckdb.sql(
            f"SELECT {', '.join(_COMPARED + _CLOSE)} FROM read_parquet('{out}/part-*.parquet') "
            f"ORDER BY path, window_index"
        ).fetchall()

    got_a, got_b = rows(a), rows(b)
    assert len(got_a) == len(got_b) == expect_rows
    n = len(_COMPARED)
    for row_a, row_b in zip(got_a, got_b, strict=False):
        assert row_a[:n] == row_b[:n], (row_a[:n], row_b[:n])
        for name, x, y in zip(_CLOSE, row_a[n:], row_b[n:], strict=False):
            same = x == y if x is None or y is None else x == pytest.approx(y, abs=1e-5)
            assert same, (row_a[0], name, x, y)


def test_local_executor_labels_without_importing_ray(tmp_path, clips, checkpoint, cli_env):
    """``avfusion label --executor local`` in a fresh interpreter where any attempt to
    import Ray fails: the job still labels every file, and nothing asked for Ray."""
    out = tmp_path / "labels"
    argv = [
        "label",
        str(clips),
        str(out),
        "--checkpoint",
        str(checkpoint),
        "--executor",
        "local",
        "--concurrency",
        "2",
    ]
    guard = (
        "import sys\n"
        "asked = []\n"
        "class NoRay:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'ray' or name.startswith('ray.'):\n"
        "            asked.append(name)\n"
        "            raise ImportError(f'--executor local imported {name}')\n"
        "sys.meta_path.insert(0, NoRay())\n"
        "from jobs.cli import main\n"
        f"rc = main({argv!r})\n"
        "assert not asked and 'ray' not in sys.modules, asked\n"
        "sys.exit(rc)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", guard], env=cli_env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "18 files, 0 already labelled" in run.stdout
    count = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/part-*.parquet') WHERE error_class IS NULL")
    assert count.fetchall() == [(18,)]


def _direct(model, waveform, frames):
    """The model run directly on one decoded clip, through the path a row of that kind
    must take: both encoders fused, or one encoder and ``forward_head`` alone."""
    with torch.no_grad():
        wave = torch.from_numpy(waveform)[None] if waveform is not None else None
        pics = torch.from_numpy(frames)[None] if frames is not None else None
        a = model.attention.audio_proj(model.audio(wave)) if wave is not None else None
        v = model.attention.video_proj(model.video(pics)) if pics is not None else None
        if a is not None and v is not None:
            out = model(wave, pics)
            evidence = (
                model.audio.evidence(wave),
                model.video.evidence(pics, model.video.forward_frames(pics)),
            )
            assert torch.allclose(out.logits, model.forward_head(a, v, *evidence).logits)
            return out
        return model.forward_head(a, v)


def _assert_rows_equal_the_model(con, table, checkpoint, expect_rows: int) -> None:
    """EVERY labelled row equals the model run directly on the same decoded window: the
    label, confidence, the whole top-k (labels and probabilities), both attention
    weights, and both unimodal heads' labels and confidences (null where absent)."""
    model, ckpt = model_from_checkpoint(checkpoint)
    names = sorted(ckpt["label_map"], key=ckpt["label_map"].get)
    spec = ClipSpec(**ckpt["clip"])
    rows = con.execute(
        f"SELECT path, window_start, predicted_label, confidence, topk_labels, topk_probs, w_audio, "
        f"w_video, audio_only_label, audio_only_confidence, video_only_label, video_only_confidence, "
        f"flags, attention_agrees FROM {table} WHERE error_class IS NULL "
        f"ORDER BY path, window_start"
    ).fetchall()
    assert len(rows) == expect_rows
    for (
        path,
        start,
        label,
        confidence,
        topk_labels,
        topk_probs,
        w_audio,
        w_video,
        a_label,
        a_conf,
        v_label,
        v_conf,
        flags,
        agrees,
    ) in rows:
        clip = decode_clip(path, spec, start=start, limits=LABEL_LIMITS)
        q = clip.quality
        direct = _direct(model, clip.waveform if q.has_audio else None, clip.frames if q.has_video else None)
        probs = torch.softmax(direct.logits, dim=1)[0]
        top_p, top_i = probs.topk(len(topk_labels))
        assert label == names[int(top_i[0])], path
        assert confidence == pytest.approx(float(top_p[0]), abs=1e-5), path
        assert topk_labels == [names[int(i)] for i in top_i], path
        assert topk_probs == pytest.approx([float(x) for x in top_p], abs=1e-5), path
        assert (w_audio, w_video) == pytest.approx([float(x) for x in direct.weights[0]], abs=1e-5), path
        for head, got_label, got_conf in (
            (direct.audio_logits, a_label, a_conf),
            (direct.video_logits, v_label, v_conf),
        ):
            if head is None:
                assert got_label is None and got_conf is None, path
            else:
                hp = torch.softmax(head, dim=1)[0]
                assert got_label == names[int(hp.argmax())], path
                assert got_conf == pytest.approx(float(hp.max()), abs=1e-5), path
        if direct.scores is None:
            assert agrees is None, path
        else:
            assert agrees == bool(attention_agrees(direct, top_i[:1]).item()), path
        modality = {"audio_only"} if not q.has_video else ({"video_only"} if not q.has_audio else set())
        assert set(flags) & {"audio_only", "video_only"} == modality, (path, flags)


def test_odd_files_each_get_one_row(tmp_path, checkpoint, ray_local):
    corpus = tmp_path / "corpus"
    expected = make_label_corpus(corpus)
    out = tmp_path / "labels"
    assert (
        label_job.main(
            [
                str(corpus),
                str(out),
                "--checkpoint",
                str(checkpoint),
                "--extensions",
                "mp4,mkv,h264",
                "--windows",
                "all",
            ]
        )
        == 0
    )
    rows = duckdb.sql(
        f"SELECT path, error_class, predicted_label, window_index, no_audio_track, no_video_track "
        f"FROM read_parquet('{out}/part-*.parquet')"
    ).fetchall()
    by_file: dict[str, list] = {}
    for path, error, label, window, no_audio, no_video in rows:
        by_file.setdefault(Path(path).name, []).append((error, label, window, no_audio, no_video))
    assert set(by_file) == set(expected)
    for name, want in expected.items():
        got = by_file[name]
        outcomes = {"ok" if error is None else error for error, *_ in got}
        assert outcomes <= set(want.split("|")), (name, got)
        if name != "long_tiny.mp4":
            assert len(got) == 1, (name, got)
        if "ok" in outcomes:
            assert all(label is not None for _, label, *_ in got)
    seconds = torch.load(checkpoint, weights_only=True)["clip"]["clip_seconds"]  # 2 s clips here
    windows = int(np.ceil(25.0 / seconds))
    assert sorted(w for _, _, w, _, _ in by_file["long_tiny.mp4"]) == list(range(windows))
    assert by_file["audio_only.mp4"][0][4] is True and by_file["video_only.mp4"][0][3] is True


def test_kill_then_rerun_labels_every_file_once(tmp_path, clips, checkpoint, cli_env):
    out = tmp_path / "labels"
    args = [
        "avfusion",
        "label",
        str(clips),
        str(out),
        "--checkpoint",
        str(checkpoint),
        "--part-rows",
        "2",
        "--decode-batch",
        "1",
        "--model-batch",
        "2",
        "--num-cpus",
        "2",
    ]
    proc = subprocess.Popen(
        args, env=cli_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(out.glob("part-*.parquet")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(duckdb.sql(f"SELECT * FROM read_parquet('{out}/part-*.parquet')").fetchall())
    assert 0 < before < 18, "the kill must land mid-run"
    rerun = subprocess.run(args, env=cli_env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{before} already labelled" in rerun.stdout
    paths = [r[0] for r in duckdb.sql(f"SELECT path FROM read_parquet('{out}/part-*.parquet')").fetchall()]
    assert len(paths) == len(set(paths)) == 18
    assert not list(out.glob(".part-*"))


def test_predict_prints_label_top5_and_attention(tmp_path, clips, checkpoint, cli_env):
    import json

    clip = sorted(clips.glob("*.mp4"))[0]
    text = subprocess.run(
        ["avfusion", "predict", str(clip), "--checkpoint", str(checkpoint)],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert text.returncode == 0, text.stderr[-2000:]
    assert "Predicted class:" in text.stdout and "Fusion attention [audio, video]:" in text.stdout
    assert len([line for line in text.stdout.splitlines() if line.startswith("  ")]) == 5
    row = json.loads(
        subprocess.run(
            ["avfusion", "predict", str(clip), "--checkpoint", str(checkpoint), "--json"],
            env=cli_env,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    )
    assert row["w_audio"] + row["w_video"] == pytest.approx(1.0, abs=1e-5) and row["error_class"] is None
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    failed = subprocess.run(
        ["avfusion", "predict", str(bad), "--checkpoint", str(checkpoint)],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1 and "not_media" in failed.stderr


@pytest.fixture(scope="module")
def checkpoint_10s(checkpoint, tmp_path_factory):
    """The trained checkpoint applied to 10 s windows: the encoders pool over time, so
    the same weights take a longer window (the salvage corpus is made of 10 s files,
    the length the damaged-file cases are defined on)."""
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["clip"] = {**ckpt["clip"], "clip_seconds": 10.0}
    path = tmp_path_factory.mktemp("ckpt10") / "last.pt"
    torch.save(ckpt, path)
    return path


def test_every_file_gets_its_best_answer(tmp_path, checkpoint_10s, ray_local, capsys):
    """The salvage corpus, with the default extension filter: every media file gets a
    row with a prediction, exactly its flags and plausible covered seconds; the rows
    equal the model; the files the filter skips are counted and listed."""
    from tests.corpus import make_salvage_corpus

    corpus = tmp_path / "corpus"
    expected = make_salvage_corpus(corpus)
    out = tmp_path / "labels"
    assert label_job.main([str(corpus), str(out), "--checkpoint", str(checkpoint_10s), "--list-skipped"]) == 0
    printed = capsys.readouterr().out
    con = duckdb.connect()
    table = f"read_parquet('{out}/part-*.parquet')"
    rows = con.execute(
        f"SELECT path, error_class, error_message, predicted_label, flags, covered_seconds FROM {table}"
    ).fetchall()
    got = {Path(r[0]).name: r for r in rows}
    media = {n for n, want in expected.items() if want["label"] is not None}
    assert set(got) == media and len(rows) == len(media)
    for name in media:
        _, error, message, label, flags, covered = got[name]
        want = expected[name]["label"]
        assert error is None and label is not None, (name, error, message)
        assert set(flags) == want["flags"], (name, flags)
        lo, hi = want["covered"]
        assert lo <= covered <= hi, (name, covered)
    skipped = sorted(n for n, want in expected.items() if want["label"] is None)
    assert f"{len(skipped)} files skipped by the extension filter" in printed
    assert all(f"skipped: {corpus / n}" in printed for n in skipped), printed
    _assert_rows_equal_the_model(con, table, checkpoint_10s, expect_rows=len(media))


def test_every_window_of_a_cut_file_keeps_the_windows_that_decode(tmp_path):
    """--windows all on a file cut at 30 %: the windows before the cut are rows, the
    last one flagged ``truncated``; no window turns the whole file into an error."""
    from avfusion.labelling.worker import DecodeRows
    from tests.corpus import make_salvage_corpus

    make_salvage_corpus(tmp_path)
    path = str(tmp_path / "cut_at_30pct.mp4")
    rows = DecodeRows(ClipSpec(clip_seconds=1.0, frame_size=32), every_window=True).decode_file(
        path, "cut", *storage.identity(path)
    )
    assert 1 <= len(rows) < 10 and all(not r["error_class"] for r in rows), [r["error_message"] for r in rows]
    assert [r["window_index"] for r in rows] == list(range(len(rows)))
    assert all(r["window_count"] == len(rows) for r in rows)
    assert "truncated" in rows[-1]["flags"] and all("truncated" not in r["flags"] for r in rows[:-1])
    assert rows[-1]["window_end"] <= 6.0


def test_actors_given_no_gpu_label_on_the_cpu_where_cuda_is_visible(tmp_path, clips, checkpoint, cli_env):
    """The whole job with CUDA made visible in every process, its Ray actors included
    (a ``sitecustomize`` on the workers' path patches ``torch.cuda.is_available``, the
    one allowed stand-in): with the default ``--gpus-per-actor 0`` the actors keep the
    model on the CPU (a model sent to cuda here fails, there is no GPU) and the rows
    equal the model."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('AVF_FAKE_CUDA'):\n"
        "    import torch\n"
        "    torch.cuda.is_available = lambda: True\n"
        "    with open(os.environ['AVF_FAKE_CUDA'], 'a') as f:\n"
        "        f.write(f'{os.getpid()}\\n')\n"
    )
    log = tmp_path / "patched.txt"
    env = dict(
        cli_env,
        AVF_FAKE_CUDA=str(log),
        PYTHONPATH=os.pathsep.join(filter(None, [str(hook), cli_env.get("PYTHONPATH")])),
    )
    out = tmp_path / "labels"
    run = subprocess.run(
        ["avfusion", "label", str(clips), str(out), "--checkpoint", str(checkpoint), "--num-cpus", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(set(log.read_text().split())) >= 3, "the patch ran in the driver and the Ray workers"
    con = duckdb.connect()
    table = f"read_parquet('{out}/part-*.parquet')"
    assert con.execute(f"SELECT count(*) FROM {table} WHERE error_class IS NULL").fetchone()[0] == 18
    _assert_rows_equal_the_model(con, table, checkpoint, expect_rows=18)
