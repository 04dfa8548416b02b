"""The bundled real sample set is complete, well-formed and documented."""

import re
import struct
import zlib
from collections import Counter

import pytest

from avfusion import sample_data
from avfusion.probe import probe
from avfusion.sample_data.rcc import RccArchive, RccError
from avfusion.sources import read_vggsound_csv

ROWS = read_vggsound_csv(sample_data.labels_csv())


def test_labels_are_vggsound_format_and_stratified():
    assert 30 <= len(ROWS) <= 40
    labels = Counter(r.label for r in ROWS)
    assert 6 <= len(labels) <= 10
    for label in labels:
        assert {r.split for r in ROWS if r.label == label} == {"train", "test"}, label
    assert any("," in r.label for r in ROWS), "quoted labels with commas are exercised"


def test_clips_on_disk_match_labels_exactly():
    on_disk = {p.stem for p in sample_data.clips_dir().glob("*.mp4")}
    assert on_disk == {r.key for r in ROWS}
    total = sum(p.stat().st_size for p in sample_data.clips_dir().glob("*.mp4"))
    assert total < 6_000_000


@pytest.mark.parametrize("row", ROWS, ids=[r.key for r in ROWS])
def test_each_clip_is_a_ten_second_av_clip(row):
    info = probe(sample_data.clips_dir() / f"{row.key}.mp4")
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert (info.width, info.height) == (320, 240)
    assert info.duration == pytest.approx(10.0, abs=0.1)
    assert (info.sample_rate, info.channels) == (22_050, 1)


def test_every_clip_has_sources_and_licences():
    text = sample_data.sources_md().read_text()
    for row in ROWS:
        line = next((l for l in text.splitlines() if l.startswith(f"| {row.key}.mp4 |")), None)
        assert line, f"{row.key} missing from SOURCES.md"
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 5 and all(cells), line
        assert re.search(r"Public Domain|CC0|CC-BY-SA|GPL|Free Art", cells[2])
        assert re.search(r"Public Domain|CC0|CC-BY-SA|GPL|Free Art", cells[4])


def _name(name: str) -> bytes:
    raw = name.encode("utf-16-be")
    return struct.pack(">HI", len(name), 0) + raw


def _write_rcc(path, version=3):
    """A bundle laid out as Qt's rcc writes it: root → {a/ → {x.txt, y.bin (zlib)}, top.txt}."""
    names, data = b"", b""
    name_off, data_off = {}, {}
    for n in ["a", "top.txt", "x.txt", "y.bin"]:
        name_off[n] = len(names)
        names += _name(n)
    payloads = {"top.txt": (b"top", 0), "x.txt": (b"hello", 0),
                "y.bin": (struct.pack(">I", 1000) + zlib.compress(b"z" * 1000), 1)}
    for n, (blob, _) in payloads.items():
        data_off[n] = len(data)
        data += struct.pack(">I", len(blob)) + blob

    def node(name, flags, a, b):
        head = struct.pack(">IH", name_off.get(name, 0), flags)
        body = struct.pack(">II", a, b) if flags & 2 else struct.pack(">HHI", 0, 0, a)
        return head + body + (struct.pack(">Q", 0) if version >= 2 else b"")

    tree = (node("", 2, 2, 1) + node("a", 2, 2, 3) + node("top.txt", 0, data_off["top.txt"], 0)
            + node("x.txt", 0, data_off["x.txt"], 0) + node("y.bin", 1, data_off["y.bin"], 0))
    header_len = 24 if version >= 3 else 20
    data_at = header_len
    names_at = data_at + len(data)
    tree_at = names_at + len(names)
    header = b"qres" + struct.pack(">IIII", version, tree_at, data_at, names_at)
    if version >= 3:
        header += struct.pack(">I", 0)
    path.write_bytes(header + data + names + tree)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_rcc_reader(tmp_path, version):
    _write_rcc(tmp_path / "t.rcc", version)
    archive = RccArchive(tmp_path / "t.rcc")
    assert archive.names() == ["a/x.txt", "a/y.bin", "top.txt"]
    assert archive.read("a/x.txt") == b"hello"
    assert archive.read("a/y.bin") == b"z" * 1000
    assert archive.read("top.txt") == b"top"


def test_rcc_reader_rejects_other_files(tmp_path):
    (tmp_path / "x.rcc").write_bytes(b"PK\x03\x04 not qt")
    with pytest.raises(RccError, match="not a Qt resource bundle"):
        RccArchive(tmp_path / "x.rcc")
