"""Preprocess on the salvage corpus: damaged files that still hold enough content
become samples marked partial; an undecodable video stream is ``unsupported_codec``."""

import json
import tarfile

from avfusion.config import ClipSpec
from avfusion.preprocess.shard import PreprocessConfig, process_shard
from avfusion.sources import ClipTask
from tests.corpus import make_salvage_corpus


def test_shard_of_damaged_files(tmp_path):
    corpus = tmp_path / "corpus"
    expected = make_salvage_corpus(corpus)
    media = {name: want for name, want in expected.items() if want["preprocess"] is not None}
    tasks = [
        ClipTask(key=name.replace(".", "_"), source=str(corpus / name), label="x", split="train")
        for name in sorted(media)
    ]
    (tmp_path / "shards").mkdir()
    stats = process_shard(
        "00000",
        tasks,
        PreprocessConfig(clip=ClipSpec(frame_size=32), threads_per_task=1),
        {"x": 0},
        str(tmp_path / "shards"),
    )
    failed = {f.source.rsplit("/", 1)[1]: f.kind for f in stats.failures}
    want_failed = {name: want["preprocess"] for name, want in media.items() if want["preprocess"] != "ok"}
    assert failed == want_failed
    assert "internal_error" not in failed.values()
    with tarfile.open(tmp_path / "shards" / "00000.tar") as tar:
        metas = {
            m.name.rsplit(".", 1)[0]: json.load(tar.extractfile(m))
            for m in tar.getmembers()
            if m.name.endswith(".json")
        }
    by_name = {meta["source"].rsplit("/", 1)[1]: meta["quality"] for meta in metas.values()}
    assert set(by_name) == {name for name, want in media.items() if want["preprocess"] == "ok"}
    for name, quality in by_name.items():
        flags = expected[name]["label"]["flags"]
        lo, hi = expected[name]["label"]["covered"]
        assert quality["partial"] == ("partial" in flags), (name, quality)
        assert lo <= quality["covered_seconds"] <= hi, (name, quality["covered_seconds"])
