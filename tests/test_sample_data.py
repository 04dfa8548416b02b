"""The bundled real sample set is complete, well-formed, documented, and split so
that no recording or photograph is shared between folds (or between train and test)."""

import csv
import re
import struct
import zlib
from collections import Counter, defaultdict

import pytest

from avfusion import sample_data
from avfusion.probe import probe
from avfusion.sources import read_vggsound_csv
from tools.sample_data import build
from tools.sample_data.rcc import RccArchive, RccError

ROWS = read_vggsound_csv(sample_data.labels_csv())
K = 5
# What the bundled set holds: ≥300 clips in ≥10 classes, each class with ≥8 distinct
# real recordings and ≥8 distinct real photos (README.md lists the sources searched).
MIN_CLIPS, MIN_CLASSES, MIN_DISTINCT = 300, 10, 8
LICENCE = re.compile(r"Public Domain|CC0|CC-BY|GPL|Free Art", re.I)


def _sources():
    with open(sample_data.sources_csv(), newline="") as f:
        return list(csv.DictReader(f))


def check_split(
    rows: list[dict], folds: dict[str, int], k: int, min_distinct: int
) -> dict[str, dict[str, int]]:
    """Raise AssertionError unless every photo and every recording (by source id AND
    by each file in it) lies in exactly one fold, train/test follow fold 0, every
    class has ``min_distinct`` photos and recordings and appears in every fold.
    Returns per-class counts of clips, recordings and photos."""
    fold_of: dict[str, set[int]] = defaultdict(set)
    owner: dict[str, str] = {}
    per_class = defaultdict(lambda: {"clips": 0, "sounds": set(), "photos": set(), "folds": set()})
    for r in rows:
        fold = folds[r["clip_id"]]
        assert int(r["fold"]) == fold, r["clip_id"]
        assert r["split"] == ("test" if fold == 0 else "train"), r["clip_id"]
        c = per_class[r["label"]]
        c["clips"] += 1
        c["folds"].add(fold)
        for kind in ("photo", "sound"):
            c[kind + "s"].add(r[kind])
            for name in [r[kind], *r[kind].split("|")]:
                fold_of[name].add(fold)
            for part in r[kind].split("|"):  # one file belongs to one source only
                assert owner.setdefault(part, r[kind]) == r[kind], f"{part} is in two sources"
    leaks = {name: sorted(f) for name, f in fold_of.items() if len(f) > 1}
    assert not leaks, f"sources in more than one fold: {leaks}"
    for label, c in per_class.items():
        assert len(c["sounds"]) >= min_distinct, (label, "recordings", len(c["sounds"]))
        assert len(c["photos"]) >= min_distinct, (label, "photos", len(c["photos"]))
        assert c["folds"] == set(range(k)), (label, c["folds"])
    return {
        label: {"clips": c["clips"], "recordings": len(c["sounds"]), "photos": len(c["photos"])}
        for label, c in per_class.items()
    }


def test_labels_are_vggsound_format_and_stratified():
    assert len(ROWS) >= MIN_CLIPS
    labels = Counter(r.label for r in ROWS)
    assert len(labels) >= MIN_CLASSES
    for label in labels:
        assert {r.split for r in ROWS if r.label == label} == {"train", "test"}, label
    assert any("," in r.label for r in ROWS), "quoted labels with commas are exercised"
    assert all(r.start == 0 and re.fullmatch(r"avf_[a-z]+_\d\d", r.youtube_id) for r in ROWS)


def test_clips_on_disk_match_labels_exactly():
    on_disk = {p.stem for p in sample_data.clips_dir().glob("*.mp4")}
    assert on_disk == {r.key for r in ROWS}
    total = sum(p.stat().st_size for p in sample_data.clips_dir().glob("*.mp4"))
    assert total < 20_000_000


def test_each_clip_is_a_ten_second_av_clip():
    for row in ROWS:
        info = probe(sample_data.clips_dir() / f"{row.key}.mp4")
        assert (info.video_codec, info.audio_codec) == ("h264", "aac"), row.key
        assert (info.width, info.height) == (160, 120), row.key
        assert info.duration == pytest.approx(10.0, abs=0.1), row.key
        assert (info.sample_rate, info.channels) == (22_050, 1), row.key


def test_every_clip_has_sources_and_licences():
    sources = {r["clip_id"]: r for r in _sources()}
    assert set(sources) == {r.youtube_id for r in ROWS}
    text = sample_data.sources_md().read_text()
    for row in ROWS:
        src = sources[row.youtube_id]
        assert src["label"] == row.label
        assert LICENCE.search(src["photo_licence"]) and LICENCE.search(src["sound_licence"]), src
        assert src["photo_author"] and src["sound_author"], src
        line = next((ln for ln in text.splitlines() if ln.startswith(f"| {row.key}.mp4 |")), None)
        assert line, f"{row.key} missing from SOURCES.md"
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert (
            cells[1] == src["fold"]
            and src["photo"].split("|")[0] in line
            and src["sound"].split("|")[0] in line
        )


def test_folds_never_share_a_recording_or_photo():
    folds = sample_data.read_folds()
    assert set(folds) == {r.youtube_id for r in ROWS}
    assert set(folds.values()) == set(range(K))
    labels = {r.youtube_id: r for r in ROWS}
    assert all((labels[c].split == "test") == (f == 0) for c, f in folds.items())
    counts = check_split(_sources(), folds, K, MIN_DISTINCT)
    assert len(counts) >= MIN_CLASSES
    print("\n".join(f"{label}: {c}" for label, c in sorted(counts.items())))


@pytest.mark.parametrize("leak", ["photo", "sound"])
def test_split_check_catches_a_leak(leak):
    """The checker is not vacuous: moving one clip's source into a clip of another
    fold must fail it."""
    rows, folds = _sources(), sample_data.read_folds()
    a = next(r for r in rows if r["fold"] == "0")
    b = next(r for r in rows if r["fold"] == "1" and r["label"] == a["label"])
    b[leak] = a[leak]
    with pytest.raises(AssertionError, match="more than one fold"):
        check_split(rows, folds, K, MIN_DISTINCT)


def test_split_check_catches_too_few_sources():
    rows, folds = _sources(), sample_data.read_folds()
    with pytest.raises(AssertionError, match="recordings|photos"):
        check_split(rows, folds, K, 100)


def test_every_class_has_eight_recordings_and_eight_photos():
    """The per-class minimum, counted from what the clips were made of (a
    recording shipped as several correlated files counts once)."""
    counts = check_split(_sources(), sample_data.read_folds(), K, 8)
    assert len(counts) >= MIN_CLASSES and sum(c["clips"] for c in counts.values()) >= MIN_CLIPS
    for label, c in counts.items():
        assert c["recordings"] >= 8 and c["photos"] >= 8, (label, c)


def test_build_classes_meet_the_per_class_target():
    """The build's own source lists (the split's unit: a tuple is one recording) hold
    ≥8 distinct recordings and photos per class, and no file serves two classes."""
    seen: dict[str, str] = {}
    for cls in build.CLASSES:
        assert len(cls.sounds) >= 8 and len(cls.photos) >= 8, cls.label
        for source in (*cls.sounds, *cls.photos):
            for f in build._files(source):
                assert seen.setdefault(f, cls.label) == cls.label, f"{f} used by two classes"


def test_build_plan_reproduces_the_committed_tables():
    """``build.plan`` (no media needed) gives exactly the committed labels and folds."""
    plans = build.plan()
    assert {p.clip_id: p.fold for p in plans} == sample_data.read_folds()
    assert {p.clip_id: p.label for p in plans} == {r.youtube_id: r.label for r in ROWS}
    sources = {r["clip_id"]: r for r in _sources()}
    for p in plans:
        row = sources[p.clip_id]
        assert (build.source_id(p.photo), build.source_id(p.sound)) == (row["photo"], row["sound"])
        assert p.files() == (row["photo_file"], row["sound_file"])
        assert row["photo_file"] in row["photo"].split("|") and row["sound_file"] in row["sound"].split("|")


def test_bundle_readme_credits_are_parsed(tmp_path):
    """Per-file credits inside a GCompris bundle README, in both layouts it uses."""
    readme = (
        "Copyright: A\nLicense: CC0-1.0\nFiles:\nx.webp\ny.webp\n\n"
        "Files: z.webp\nSource: s\nLicense: CC-BY-SA-4.0\nCopyright: B\n"
    )
    _write_flat_rcc(tmp_path / "t.rcc", "d", {"README": readme.encode(), "z.webp": b"z"})
    media = build.MediaRoot(tmp_path)
    assert media.bundle_credits("t.rcc#d/y.webp") == ("A", "CC0-1.0")
    assert media.bundle_credits("t.rcc#d/z.webp") == ("B", "CC-BY-SA-4.0")
    assert media.bundle_credits("t.rcc#d/w.webp") is None


def _name(name: str) -> bytes:
    raw = name.encode("utf-16-be")
    return struct.pack(">HI", len(name), 0) + raw


def _write_flat_rcc(path, folder: str, files: dict[str, bytes]):
    """A version-3 bundle: root → folder/ → the given files, uncompressed."""
    order = [folder, *files]
    names, name_off = b"", {}
    for n in order:
        name_off[n] = len(names)
        names += _name(n)
    data, data_off = b"", {}
    for n, blob in files.items():
        data_off[n] = len(data)
        data += struct.pack(">I", len(blob)) + blob

    def node(off, flags, a, b):
        body = struct.pack(">II", a, b) if flags & 2 else struct.pack(">HHI", 0, 0, a)
        return struct.pack(">IH", off, flags) + body + struct.pack(">Q", 0)

    tree = node(0, 2, 1, 1) + node(name_off[folder], 2, len(files), 2)
    tree += b"".join(node(name_off[n], 0, data_off[n], 0) for n in files)
    data_at = 24
    names_at = data_at + len(data)
    tree_at = names_at + len(names)
    header = b"qres" + struct.pack(">IIIII", 3, tree_at, data_at, names_at, 0)
    path.write_bytes(header + data + names + tree)


def _write_rcc(path, version=3):
    """A bundle laid out as Qt's rcc writes it: root → {a/ → {x.txt, y.bin (zlib)}, top.txt}."""
    names, data = b"", b""
    name_off, data_off = {}, {}
    for n in ["a", "top.txt", "x.txt", "y.bin"]:
        name_off[n] = len(names)
        names += _name(n)
    payloads = {
        "top.txt": (b"top", 0),
        "x.txt": (b"hello", 0),
        "y.bin": (struct.pack(">I", 1000) + zlib.compress(b"z" * 1000), 1),
    }
    for n, (blob, _) in payloads.items():
        data_off[n] = len(data)
        data += struct.pack(">I", len(blob)) + blob

    def node(name, flags, a, b):
        head = struct.pack(">IH", name_off.get(name, 0), flags)
        body = struct.pack(">II", a, b) if flags & 2 else struct.pack(">HHI", 0, 0, a)
        return head + body + (struct.pack(">Q", 0) if version >= 2 else b"")

    tree = (
        node("", 2, 2, 1)
        + node("a", 2, 2, 3)
        + node("top.txt", 0, data_off["top.txt"], 0)
        + node("x.txt", 0, data_off["x.txt"], 0)
        + node("y.bin", 1, data_off["y.bin"], 0)
    )
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
