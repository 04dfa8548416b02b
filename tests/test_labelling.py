"""The label run without Ray: input scan, resume identities, superseded rows, the part
writer (cuts only where a file ends, parts appear whole), the model stage's device
choice, and the whole run through the in-process executor."""

import math
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from avfusion import checkpoint, storage
from avfusion.executor import BatchPipeline, Executor, InProcessExecutor
from avfusion.labelling.run import (
    LABEL_EXTENSIONS,
    build_items,
    done_identities,
    drop_superseded,
    read_parts,
    scan_inputs,
    write_parts,
)
from avfusion.labelling.schema import SCHEMA, rows_to_batch
from avfusion.labelling.worker import Predictor
from avfusion.model import FusionModel, ModelConfig
from avfusion.sources import scan_folder
from avfusion.synth import DEFAULT_CLASSES, SynthSpec, make_class_conditional_set


def _batch(rows: list[tuple[str, int, int, str]]) -> dict[str, np.ndarray]:
    """A Predictor-shaped batch: (path, window_index, window_count, error_class) per row,
    every other schema column filled with a value of its type."""
    n = len(rows)
    cols = {}
    for field in SCHEMA:
        t = field.type
        filler = (
            "x"
            if pa.types.is_string(t)
            else 0
            if pa.types.is_integer(t)
            else 0.5
            if pa.types.is_floating(t)
            else False
            if pa.types.is_boolean(t)
            else b"x"
            if pa.types.is_binary(t)
            else [0.5]
            if pa.types.is_floating(t.value_type)
            else ["x"]
        )
        arr = np.empty(n, dtype=object)
        arr[:] = [filler] * n
        cols[field.name] = arr
    cols["path"] = np.array([r[0] for r in rows])
    cols["path_bytes"] = np.array([os.fsencode(r[0]) for r in rows], dtype=object)
    cols["window_index"] = np.array([r[1] for r in rows])
    cols["window_count"] = np.array([r[2] for r in rows])
    cols["error_class"] = np.array([r[3] for r in rows])
    cols["file_size"] = np.array([len(r[0]) for r in rows])
    cols["mtime_ns"] = np.array([7] * n)
    cols["flags"] = np.array([""] * n)
    return cols


def _file_rows(windows: dict[str, int], error: str = "") -> list[tuple[str, int, int, str]]:
    return [(path, i, n, error) for path, n in windows.items() for i in range(n)]


def _split(rows, sizes):
    """The rows as batches of the given sizes: batch edges fall inside files."""
    out, at = [], 0
    for size in sizes:
        out.append(_batch(rows[at : at + size]))
        at += size
    assert at == len(rows)
    return out


def test_parts_are_cut_only_where_a_file_ends(tmp_path):
    windows = {"a": 3, "b": 1, "c": 2, "d": 1, "e": 4, "f": 1, "g": 1}
    rows = _file_rows(windows)
    done_files = []
    parts = write_parts(_split(rows, [2, 4, 1, 5, 1]), str(tmp_path), part_rows=2, on_files=done_files.append)
    assert sum(done_files) == len(windows)
    assert len(parts) >= 3
    back = []
    for i, url in enumerate(parts):
        table = pq.read_table(url)
        index, count = table.column("window_index").to_pylist(), table.column("window_count").to_pylist()
        assert index[0] == 0 and index[-1] == count[-1] - 1, (url, index, count)  # whole files only
        assert table.num_rows >= 2 or i == len(parts) - 1
        back += list(zip(table.column("path").to_pylist(), index, strict=False))
        assert table.schema == SCHEMA
    assert back == [(p, i) for p, i, _, _ in rows]  # every row once, in order
    names = sorted(os.listdir(tmp_path))
    run = re.fullmatch(r"part-([0-9a-f]{8})-00000\.parquet", names[0]).group(1)
    assert names == [f"part-{run}-{i:05d}.parquet" for i in range(len(parts))]


def test_parts_appear_whole_and_a_broken_stream_leaves_only_whole_parts(tmp_path):
    """A reader listing the folder while parts are written sees only complete parts
    (atomic names); a stream that fails mid-way leaves the parts already cut, each
    whole, and no temporary file, so the next run relabels exactly the rest."""
    rows = _file_rows({f"f{i}": 1 + i % 3 for i in range(12)})
    seen = []

    def batches():
        for batch in _split(rows, [3] * 8)[:6]:
            for url in storage.list_files(str(tmp_path), "part-*.parquet"):
                table = pq.read_table(url)  # a partial file would not parse
                assert (
                    table.column("window_index")[-1].as_py() == table.column("window_count")[-1].as_py() - 1
                )
            seen.append(len(os.listdir(tmp_path)))
            yield batch
        raise RuntimeError("the executor died")

    with pytest.raises(RuntimeError):
        write_parts(batches(), str(tmp_path), part_rows=4)
    assert max(seen) >= 2
    assert all(n.startswith("part-") and n.endswith(".parquet") for n in os.listdir(tmp_path))
    labelled = {p for p, _, _ in done_identities(str(tmp_path))}
    table = read_parts(str(tmp_path))
    assert table.num_rows == sum(1 + i % 3 for i in range(12) if f"f{i}" in labelled)  # whole files only
    assert 0 < len(labelled) < 12


def test_resume_identities_skip_transient_errors(tmp_path):
    write_parts(
        [
            _batch(
                _file_rows({"ok": 2, "bad_media": 1})
                + [("flaky", 0, 1, "fetch_error"), ("crashed", 0, 1, "internal_error")]
            )
        ],
        str(tmp_path),
        part_rows=100,
    )
    rows = _batch([("bad_media", 0, 1, "not_media")])
    write_parts([rows], str(tmp_path), part_rows=100)
    assert done_identities(str(tmp_path)) == {("ok", 2, 7), ("bad_media", 9, 7)}
    assert done_identities(str(tmp_path / "empty")) == set()


def test_superseded_transient_rows_are_dropped_and_nothing_else(tmp_path):
    out = str(tmp_path)
    write_parts(
        [
            _batch(
                [
                    ("x", 0, 1, "fetch_error"),
                    ("y", 0, 1, "internal_error"),
                    ("z", 0, 1, "not_media"),
                    ("w", 0, 1, ""),
                ]
            )
        ],
        out,
        part_rows=100,
    )
    first = storage.list_files(out, "part-*.parquet")
    assert drop_superseded(out) == 0  # nothing relabelled yet: the transient rows stay (they are the record)
    write_parts([_batch([("x", 0, 2, ""), ("x", 1, 2, "")])], out, part_rows=100)  # a later run labelled x
    assert drop_superseded(out) == 1
    assert drop_superseded(out) == 0
    assert len(storage.list_files(out, "part-*.parquet")) == len(first) + 1
    rows = sorted(
        zip(
            *(read_parts(out).column(c).to_pylist() for c in ("path", "window_index", "error_class")),
            strict=True,
        )
    )
    assert rows == [
        ("w", 0, None),
        ("x", 0, None),
        ("x", 1, None),
        ("y", 0, "internal_error"),
        ("z", 0, "not_media"),
    ]


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for name in ("a.mp4", "sub/b.WAV", "notes.txt", "sub/c.gif", "sub/readme"):
        (root / name).write_bytes(b"0123")
    (root / "dir.mkv").mkdir()  # a directory named like a video: reported, not skipped
    (root / "link.mp4").symlink_to(root / "a.mp4")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "hidden.mp4").write_bytes(b"x")
    (root / "linked_dir").symlink_to(outside)  # directory symlinks are not followed
    return root


# Forks children that read a part and then exit as a process does (finalizing); prints
# how many of them died. The parent reads nothing, so no Arrow thread exists at a fork.
_EXIT_RACE = """
import os, sys
from avfusion import storage
url, n, died = sys.argv[1], int(sys.argv[2]), 0
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        for _ in range(3):
            storage.read_parquet(url)
        break
    _, status = os.waitpid(pid, 0)
    died += os.waitstatus_to_exitcode(status) != 0
else:
    print(died)
"""


@pytest.mark.slow
def test_reading_parts_leaves_no_arrow_thread_holding_python_memory_at_exit(tmp_path):
    """``avfusion label`` reads its parts just before it exits. ``pq.read_table`` over
    Python ``bytes`` left a buffer for an Arrow thread to release after the call, which
    then took the GIL of an interpreter shutting down: SIGABRT ("terminate called
    without an active exception", apache/arrow 33975) in 67 of 300 such children here.
    ``storage.read_parquet`` reads from an Arrow-owned copy: none may die."""
    url = str(tmp_path / "part.parquet")
    n = 100_000
    pq.write_table(pa.table({"a": np.arange(n), "b": np.random.rand(n)}), url, row_group_size=5000)
    run = subprocess.run(
        [sys.executable, "-c", _EXIT_RACE, url, "40"], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0 and run.stdout.strip() == "0", (run.stdout, run.stderr[-2000:])


def test_scan_walks_once_for_label_and_preprocess(folder, tmp_path):
    found, skipped = scan_inputs(str(folder), LABEL_EXTENSIONS)
    rel = lambda paths: [os.path.relpath(p, folder) for p in paths]  # noqa: E731
    assert rel(found) == ["a.mp4", "dir.mkv", "link.mp4", "sub/b.WAV", "sub/c.gif"]
    assert rel(skipped) == ["notes.txt", "sub/readme"]  # linked_dir/hidden.mp4 is not reached
    tasks, _ = scan_folder(folder)  # preprocess's scan: the same walk, video extensions
    assert [t.source for t in tasks] == [p for p in found if p.lower().endswith((".mp4", ".mkv"))]
    assert [t.key for t in tasks] == ["a", "dir", "link"]
    listed = tmp_path / "list.txt"
    listed.write_text(f"# a comment\n{folder / 'notes.txt'}\n\n{folder / 'a.mp4'}\n")
    assert scan_inputs(str(listed), LABEL_EXTENSIONS) == (
        [str(folder / "notes.txt"), str(folder / "a.mp4")],
        [],
    )
    with pytest.raises(FileNotFoundError):
        scan_inputs(str(tmp_path / "nope"), LABEL_EXTENSIONS)


def test_items_skip_files_already_labelled_unless_changed(folder):
    found, _ = scan_inputs(str(folder), LABEL_EXTENSIONS)
    items = build_items(found, str(folder), done=set())
    assert [i["key"] for i in items] == ["a.mp4", "dir.mkv", "link.mp4", "sub/b.WAV", "sub/c.gif"]
    a = items[0]
    done = {(a["path"], a["file_size"], a["mtime_ns"])}
    assert [i["key"] for i in build_items(found, str(folder), done)] == [
        "dir.mkv",
        "link.mp4",
        "sub/b.WAV",
        "sub/c.gif",
    ]
    (folder / "a.mp4").write_bytes(b"changed content")  # new size: labelled again
    assert build_items(found, str(folder), done)[0]["key"] == "a.mp4"
    assert build_items(found, None, set())[0]["key"] == a["path"]  # a list file: the path is the key


@pytest.fixture
def tiny_checkpoint(tmp_path):
    cfg = ModelConfig(num_classes=3, embed_dim=16, audio_width=8, video_weights="none")
    path = str(tmp_path / "tiny.pt")
    checkpoint.save(
        {
            "model": FusionModel(cfg).state_dict(),
            "model_config": cfg.__dict__,
            "label_map": {"a": 0, "b": 1, "c": 2},
            "clip": {"sample_rate": 16000, "clip_seconds": 1.0, "num_frames": 2, "frame_size": 32},
        },
        path,
    )
    return path


def test_an_actor_given_no_gpu_runs_on_the_cpu_where_cuda_is_visible(tiny_checkpoint, monkeypatch):
    """Ray shows GPUs to actors that asked for none; with CUDA visible (the one allowed
    stand-in) an actor with no GPU resource still puts its model on the CPU, while the
    bare availability check would have taken the GPU it was not given."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    from avfusion.device import choose_device

    assert choose_device("auto", gpus_assigned=None).type == "cuda"  # the bare availability check
    predictor = Predictor(tiny_checkpoint, top_k=2, gpus_assigned=0)
    assert predictor.device.type == "cpu"
    assert all(p.device.type == "cpu" for p in predictor.model.parameters())
    out = predictor(_decoded_rows(3))
    assert list(out["error_class"]) == ["", "", ""] and all(len(t) == 2 for t in out["topk_labels"])


def _decoded_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """DecodeRows-shaped rows: row 0 both modalities, row 1 audio only, row 2 video only, …"""
    rng = np.random.default_rng(seed)
    rows = [
        {
            "path": f"p{i}",
            "key": f"p{i}",
            "file_size": 1,
            "mtime_ns": 1,
            "error_class": "",
            "error_message": "",
            "flags": "",
            "no_audio_track": i % 3 == 2,
            "no_video_track": i % 3 == 1,
            "window_index": 0,
            "window_count": 1,
            "waveform": rng.uniform(-1, 1, 16000).astype(np.float32),
            "frames": rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8),
        }
        for i in range(n)
    ]
    return rows_to_batch(rows)


def test_predictor_rows_equal_the_model_from_one_host_transfer(tiny_checkpoint):
    """Each row (fused, audio-only, video-only) equals the model run on it alone; the
    per-batch results cross to the host once per modality group, not once per row."""
    predictor = Predictor(tiny_checkpoint, top_k=3)
    batch = _decoded_rows(6, seed=1)
    calls = []
    real = torch.Tensor.cpu
    torch.Tensor.cpu = lambda self, *a, **k: (calls.append(self.shape), real(self, *a, **k))[1]
    try:
        out = predictor(batch)
    finally:
        torch.Tensor.cpu = real
    assert len(calls) == 3  # fused, audio-only and video-only groups: one transfer each
    model = predictor.model
    for i in range(6):
        dev = predictor.device  # the model's (a GPU where there is one)
        wave = None if batch["no_audio_track"][i] else torch.from_numpy(batch["waveform"][i : i + 1]).to(dev)
        frames = None if batch["no_video_track"][i] else torch.from_numpy(batch["frames"][i : i + 1]).to(dev)
        with torch.no_grad():
            res = model.forward_head(*model.forward_features(wave, frames))
        p, idx = torch.softmax(res.logits, 1)[0].topk(3)
        assert out["topk_labels"][i] == [predictor.names[j] for j in idx]
        assert out["topk_probs"][i] == pytest.approx(p.tolist(), abs=1e-5)
        assert [out["w_audio"][i], out["w_video"][i]] == pytest.approx(res.weights[0].tolist(), abs=1e-5)
        assert (out["audio_only_label"][i] is None) == (wave is None)
        assert (out["attention_agrees"][i] is None) == (wave is None or frames is None)
        if wave is not None:
            assert out["audio_only_confidence"][i] == pytest.approx(
                float(torch.softmax(res.audio_logits, 1).max()), abs=1e-5
            )
        want = {"audio_only"} if frames is None else {"video_only"} if wave is None else set()
        assert set(filter(None, out["flags"][i].split(","))) == want


def test_bf16_rows_stay_close_to_fp32(tiny_checkpoint):
    """The bf16 option (autocast, fp32 softmax) on the CPU, the same code CUDA runs:
    probabilities near fp32's and valid rows."""
    batch = _decoded_rows(3, seed=2)
    fp32 = Predictor(tiny_checkpoint, top_k=3)(batch)
    bf16 = Predictor(tiny_checkpoint, top_k=3, bf16=True)(batch)
    for i in range(3):
        want = dict(zip(fp32["topk_labels"][i], fp32["topk_probs"][i], strict=False))
        got = dict(zip(bf16["topk_labels"][i], bf16["topk_probs"][i], strict=False))
        assert set(got) == set(want)
        assert sum(got.values()) == pytest.approx(1.0, abs=1e-3)
        assert all(abs(got[k] - want[k]) < 0.05 for k in want)


class _Refusing(Executor):
    """An executor that records what it was handed and stops the run there."""

    def __init__(self):
        self.entered, self.items = 0, []

    def __enter__(self):
        self.entered += 1
        return self

    def map_batches(self, pipeline, items):
        self.items.append([i["path"] for i in items])
        raise RuntimeError("stop here: the executor would run")


def test_a_rerun_with_everything_labelled_starts_no_executor(folder, tiny_checkpoint, tmp_path, capsys):
    """The run's resume, end to end without Ray: files whose identity is in the parts
    are not handed to the executor; a transient-error row is, and only it."""
    from avfusion.labelling import LabelConfig, label

    found, _ = scan_inputs(str(folder), LABEL_EXTENSIONS)
    out = tmp_path / "labels"
    batch = _batch([(p, 0, 1, "") for p in found])
    batch["file_size"] = np.array([storage.identity(p)[0] for p in found])
    batch["mtime_ns"] = np.array([storage.identity(p)[1] for p in found])
    write_parts([batch], str(out), part_rows=100)

    cfg = LabelConfig(input=str(folder), out=str(out), checkpoint=tiny_checkpoint)
    idle = _Refusing()
    assert label(cfg, idle) == len(found)
    assert idle.entered == 0, "nothing to label: no executor may start"
    assert f"{len(found)} files, {len(found)} already labelled" in capsys.readouterr().out

    flaky = _batch([(found[0], 0, 1, "fetch_error")])
    flaky["file_size"], flaky["mtime_ns"] = batch["file_size"][:1], batch["mtime_ns"][:1]
    for url in storage.list_files(str(out), "part-*.parquet"):
        storage.remove(url)
    write_parts([flaky], str(out), part_rows=100)
    write_parts([{k: v[1:] for k, v in batch.items()}], str(out), part_rows=100)
    asked = _Refusing()
    with pytest.raises(RuntimeError):
        label(cfg, asked)
    assert asked.entered == 1 and asked.items == [[found[0]]]
    assert (
        f"{len(found)} files, {len(found) - 1} already labelled in {out}, 1 to label"
        in capsys.readouterr().out
    )


class _Model:
    """A stateful stage that records how it was built and the batches it saw."""

    built: list[dict] = []

    def __init__(self, offset, gpus_assigned):
        self.offset = offset
        _Model.built.append({"offset": offset, "gpus_assigned": gpus_assigned})
        self.sizes = _Model.sizes = []

    def __call__(self, batch):
        self.sizes.append(len(batch["x"]))
        return {"x": batch["x"] + self.offset, "tag": batch["tag"]}


def test_in_process_pipeline_decodes_on_bounded_threads_then_one_model_in_order(monkeypatch):
    """Decode batches run on at most ``concurrency`` threads (and no more than the
    CPUs); the one model instance is built once with the GPUs asked for as its grant
    and sees full ``model_batch`` batches, the rows in item order."""
    monkeypatch.setattr("avfusion.executor.usable_cpus", lambda: 3)  # a 3-CPU machine
    running, peak, lock = [0], [0], threading.Lock()

    def decode(batch):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        # one file can be several rows (windows): two rows per item here
        return {"x": np.repeat(batch["x"], 2), "tag": np.repeat(batch["tag"], 2)}

    items = [{"x": i, "tag": f"f{i}"} for i in range(11)]
    _Model.built = []
    pipeline = BatchPipeline(
        decode=decode, decode_batch=2, model=_Model, model_kwargs={"offset": 100}, model_batch=5, gpus=0.5
    )
    out = list(InProcessExecutor(8).map_batches(pipeline, items))
    assert _Model.built == [{"offset": 100, "gpus_assigned": math.ceil(0.5)}]
    assert _Model.sizes == [5, 5, 5, 5, 2]
    assert 1 < peak[0] <= 3
    assert list(np.concatenate([b["x"] for b in out])) == [100 + i for i in range(11) for _ in (0, 1)]
    assert list(np.concatenate([b["tag"] for b in out])) == [f"f{i}" for i in range(11) for _ in (0, 1)]
    decoded = list(InProcessExecutor().map_batches(BatchPipeline(decode=decode, decode_batch=4), items))
    assert [len(b["x"]) for b in decoded] == [8, 8, 6]


def test_the_whole_run_in_process_labels_like_the_model(tmp_path, tiny_checkpoint, capsys):
    """``label`` through ``InProcessExecutor`` on real clips: one row per file, each
    equal to the worker's stages run on that file alone; a re-run labels nothing."""
    from avfusion.config import ClipSpec
    from avfusion.labelling import LabelConfig, label
    from avfusion.labelling.worker import DecodeRows

    clips = tmp_path / "clips"
    make_class_conditional_set(
        clips,
        per_class=1,
        spec=SynthSpec(width=32, height=32, duration=1.0, fps=4, sample_rate=16_000),
        classes=DEFAULT_CLASSES[:4],
    )
    found, _ = scan_inputs(str(clips), LABEL_EXTENSIONS)
    assert len(found) == 4
    out = str(tmp_path / "labels")
    cfg = LabelConfig(
        input=str(clips), out=out, checkpoint=tiny_checkpoint, decode_batch=1, model_batch=3, part_rows=2
    )
    assert label(cfg, InProcessExecutor(2)) == len(found)
    rows = {r["path"]: r for r in read_parts(out).to_pylist()}
    assert sorted(rows) == found and all(r["error_class"] is None for r in rows.values())
    decoder = DecodeRows(ClipSpec(sample_rate=16000, clip_seconds=1.0, num_frames=2, frame_size=32))
    predictor = Predictor(tiny_checkpoint, top_k=5, gpus_assigned=0)
    for path in found:
        alone = predictor(rows_to_batch(decoder.decode_file(path, "k", *storage.identity(path))))
        got = rows[path]
        assert got["topk_labels"] == alone["topk_labels"][0], path
        assert got["topk_probs"] == pytest.approx(alone["topk_probs"][0], abs=1e-5), path
        weights = [alone["w_audio"][0], alone["w_video"][0]]
        assert [got["w_audio"], got["w_video"]] == pytest.approx(weights, abs=1e-5), path
        assert got["attention_agrees"] == alone["attention_agrees"][0], path
    capsys.readouterr()
    assert label(cfg, _Refusing()) == len(found)
    assert f"{len(found)} files, {len(found)} already labelled" in capsys.readouterr().out
