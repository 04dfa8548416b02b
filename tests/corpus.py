"""A corpus of malformed and odd media files, with the failure kind each must produce.

Shared by the decode, preprocess and label tests so that every job is held to the
same classification.
"""

from __future__ import annotations

import io
import os
import socket
import stat
import struct
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from avfusion.synth import SynthSpec, write_clip


def _drop_box(data: bytes, box: bytes) -> bytes:
    out, i = b"", 0
    while i + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        size = size or len(data) - i
        if kind != box:
            out += data[i : i + size]
        i += size
    return out


def make_malformed_corpus(root: Path) -> dict[str, str]:
    """Write the corpus under ``root``; returns file name → expected failure kind."""
    root.mkdir(parents=True, exist_ok=True)
    good = write_clip(
        root / "_good.tmp.mp4", SynthSpec(duration=2.0, width=160, height=120)
    ).path.read_bytes()
    (root / "_good.tmp.mp4").unlink()
    jpeg = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(jpeg, format="JPEG")
    files = {
        "zero_bytes.mp4": (b"", "not_media"),
        "text_as.mp4": (b"this is not a video\n" * 10, "not_media"),
        "truncated.mp4": (good[: len(good) // 3], "not_media"),
        "moov_missing.mp4": (_drop_box(good, b"moov"), "not_media"),
        "jpeg_as.mp4": (jpeg.getvalue(), "image_not_video"),
    }
    for name, (data, _) in files.items():
        (root / name).write_bytes(data)
    expected = {name: kind for name, (_, kind) in files.items()}
    write_clip(root / "audio_only.mp4", SynthSpec(video_codec=None, duration=2.0))
    expected["audio_only.mp4"] = "no_video"
    write_clip(root / "one_frame.mp4", SynthSpec(duration=1.0, fps=1, width=160, height=120))
    expected["one_frame.mp4"] = "too_few_frames"
    write_clip(root / "tiny_16x16.mp4", SynthSpec(duration=1.0, width=16, height=16))
    expected["tiny_16x16.mp4"] = "too_small"
    return expected


def make_mixed_folder(tmp: Path, clips: Path) -> tuple[Path, Path, dict[str, str]]:
    """A preprocess input: the good clips of ``clips`` (symlinked), the malformed corpus
    under ``bad/``, and a labels CSV with one extra row whose file is missing. Returns
    (folder, labels CSV, the malformed files' expected kinds)."""
    data = tmp / "in"
    data.mkdir()
    for p in clips.glob("*.mp4"):
        (data / p.name).symlink_to(p)
    bad = make_malformed_corpus(data / "bad")
    labels = tmp / "labels.csv"
    labels.write_text((clips / "labels.csv").read_text() + "gone_clip,7,low hum,train\n")
    return data, labels, bad


def make_label_corpus(root: Path) -> dict[str, str]:
    """The label job's corpus: file name → expected ``error_class``, or ``"ok"`` for a
    file it must label (it labels audio-only, 1-frame and tiny files, unlike preprocess)."""
    import av

    expected = make_malformed_corpus(root)
    expected.update({"audio_only.mp4": "ok", "one_frame.mp4": "ok", "tiny_16x16.mp4": "ok"})
    good = write_clip(
        root / "video_only.mp4", SynthSpec(audio_codec=None, duration=2.0, width=160, height=120)
    )
    expected["video_only.mp4"] = "ok"
    data = bytearray(
        write_clip(root / "_c.mp4", SynthSpec(duration=2.0, width=160, height=120)).path.read_bytes()
    )
    (root / "_c.mp4").unlink()
    middle = len(data) // 2
    data[middle : middle + 2000] = bytes(np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8))
    (root / "corrupt_middle.mp4").write_bytes(bytes(data))
    expected["corrupt_middle.mp4"] = "ok|decode_error"
    write_clip(root / "short_0.3s.mp4", SynthSpec(duration=0.3, width=160, height=120))
    expected["short_0.3s.mp4"] = "ok"
    write_clip(
        root / "uhd_4k.mp4", SynthSpec(duration=0.4, fps=10, width=3840, height=2160, audio_codec=None)
    )
    expected["uhd_4k.mp4"] = "ok"
    write_clip(
        root / "long_tiny.mp4", SynthSpec(duration=25.0, fps=2, width=64, height=64, sample_rate=16_000)
    )
    expected["long_tiny.mp4"] = "ok"
    write_clip(
        root / "hires_audio.mkv",
        SynthSpec(
            container="mkv",
            audio_codec="flac",
            sample_rate=96_000,
            channels=6,
            duration=1.0,
            width=96,
            height=96,
        ),
    )
    expected["hires_audio.mkv"] = "ok"
    write_clip(root / "ünïcode name with spaces.mp4", SynthSpec(duration=1.0, width=96, height=96))
    expected["ünïcode name with spaces.mp4"] = "ok"
    for fmt, name in (("PNG", "png_as.mp4"), ("GIF", "gif_as.mp4")):
        buf = io.BytesIO()
        Image.fromarray(np.full((48, 48, 3), 90, np.uint8)).save(buf, format=fmt)
        (root / name).write_bytes(buf.getvalue())
        expected[name] = "image_not_video"
    with av.open(str(root / "raw.h264"), "w", format="h264") as out:  # an elementary stream, no container
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 96, "yuv420p"
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(np.full((96, 96, 3), i * 8, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    expected["raw.h264"] = "ok"
    (root / "dangling.mp4").symlink_to(root / "does_not_exist.mp4")
    expected["dangling.mp4"] = "missing_file"
    (root / "a_directory.mp4").mkdir()
    expected["a_directory.mp4"] = "not_a_file"
    (root / "linked.mp4").symlink_to(good.path)
    expected["linked.mp4"] = "ok"
    return expected


# ----------------------------------------------------------------------------- salvage


def faststart_copy(src: Path, dst: Path) -> Path:
    """Remux ``src`` into an MP4 with its index (moov) first, as web/phone MP4s are:
    then a cut or damaged tail still leaves a readable index."""
    import av

    with (
        av.open(str(src)) as inp,
        av.open(str(dst), "w", format="mp4", options={"movflags": "faststart"}) as out,
    ):
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        for packet in inp.demux():
            if packet.dts is None:  # the demuxer's flush packets
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return dst


def _write_gif(path: Path, n: int = 30, fps: int = 10, side: int = 64) -> None:
    from fractions import Fraction

    import av

    from avfusion.synth import barcode_frames

    with av.open(str(path), "w", format="gif") as out:
        stream = out.add_stream("gif", rate=fps)
        stream.width = stream.height = side
        stream.pix_fmt = "rgb8"
        stream.codec_context.time_base = Fraction(1, fps)
        for i, picture in enumerate(barcode_frames(n, side, side)):
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _write_h264(path: Path, n: int = 50, side: int = 96) -> None:
    import av

    from avfusion.synth import barcode_frames

    with av.open(str(path), "w", format="h264") as out:  # an elementary stream, no container
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = side, side, "yuv420p"
        for picture in barcode_frames(n, side, side):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        out.mux(stream.encode(None))


def make_salvage_corpus(root: Path, seconds: float = 10.0) -> dict[str, dict]:
    """One file per case the label job must still answer, plus files its extension
    filter skips. Returns name → expectation:

    ``label``: ``None`` for a file the filter skips, else ``{"flags": set, "covered":
    (lo, hi)}`` — the row must carry a prediction, exactly these flags and
    ``covered_seconds`` within [lo, hi] (a 10 s window by default);
    ``preprocess``: ``"ok"`` or the failure kind preprocess must classify.
    """
    root.mkdir(parents=True, exist_ok=True)
    spec = SynthSpec(duration=seconds, width=160, height=120)
    expected: dict[str, dict] = {}

    # A video codec no decoder knows beside good MP3 audio: rename the Matroska codec
    # ID of the H.264 track (same length, so every element size stays valid).
    mkv = write_clip(
        root / "_mp3.tmp.mkv",
        SynthSpec(container="mkv", audio_codec="libmp3lame", duration=seconds, width=160, height=120),
    ).path
    data = mkv.read_bytes()
    mkv.unlink()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    (root / "unknown_video_codec.mkv").write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/QQQ"))
    expected["unknown_video_codec.mkv"] = {
        "label": {"flags": {"audio_only", "video_undecodable"}, "covered": (seconds - 0.2, seconds)},
        "preprocess": "unsupported_codec",
    }

    src = write_clip(root / "_src.tmp.mp4", spec).path
    good = faststart_copy(src, root / "_fs.tmp.mp4").read_bytes()
    src.unlink()
    (root / "_fs.tmp.mp4").unlink()
    (root / "cut_at_30pct.mp4").write_bytes(good[: int(len(good) * 0.30)])
    # What survives is what lies in the first 30 % of the bytes: some seconds, not all.
    expected["cut_at_30pct.mp4"] = {
        "label": {"flags": {"partial"}, "covered": (1.0, 0.6 * seconds)},
        "preprocess": "ok",
    }
    damaged = bytearray(good)
    n = int(len(good) * 0.15)
    at = (len(good) - n) // 2
    damaged[at : at + n] = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()
    (root / "middle_15pct_overwritten.mp4").write_bytes(bytes(damaged))
    expected["middle_15pct_overwritten.mp4"] = {
        "label": {"flags": {"partial"}, "covered": (0.2 * seconds, 0.9 * seconds)},
        "preprocess": "ok",
    }

    write_clip(root / "audio.m4a", SynthSpec(container="m4a", video_codec=None, duration=seconds))
    expected["audio.m4a"] = {
        "label": {"flags": {"audio_only"}, "covered": (seconds - 0.1, seconds)},
        "preprocess": "no_video",
    }
    write_clip(
        root / "audio.wav",
        SynthSpec(container="wav", video_codec=None, audio_codec="pcm_s16le", duration=seconds),
    )
    expected["audio.wav"] = {
        "label": {"flags": {"audio_only"}, "covered": (seconds - 0.1, seconds)},
        "preprocess": "no_video",
    }
    _write_gif(root / "animated.gif", n=30, fps=10)
    expected["animated.gif"] = {
        "label": {"flags": {"video_only"}, "covered": (2.8, 3.0)},
        "preprocess": "image_not_video",
    }
    _write_h264(root / "raw.h264", n=50)
    expected["raw.h264"] = {"label": {"flags": {"video_only"}, "covered": (1.9, 2.0)}, "preprocess": "ok"}

    # What the default extension filter skips: counted and listed, never labelled.
    (root / "notes.txt").write_text("not media\n")
    (root / "cover.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    expected["notes.txt"] = {"label": None, "preprocess": None}
    expected["cover.jpg"] = {"label": None, "preprocess": None}
    return expected


# ----------------------------------------------------------------------------- hostile filesystem

# A path this long cannot be opened on Linux (PATH_MAX is 4,096 bytes with the NUL).
OVERLONG = 4097


def make_hostile_folder(root: Path, *, unreadable_bites: bool = False) -> dict[bytes, str | None]:
    """A folder a messy or hostile filesystem could hand a job: two good videos (one
    with a file name that is not UTF-8, one whose name escapes to what another file is
    literally called), a FIFO, a socket, a character device, a symlink loop, a dangling
    link, a directory named like a video, a file behind a path longer than the OS can
    open, an unreadable file (chmod 000), a file of garbage bytes with a non-UTF-8
    name, and a non-UTF-8 ``.txt`` that the extension filter skips. Returns each other
    file's path relative to ``root`` as bytes → the error kind its row or failure must
    have (None: labelled / a sample).

    Root reads a chmod-000 file anyway (CAP_DAC_OVERRIDE): pass ``unreadable_bites``
    when the job runs without that capability (``capsh --drop``) to expect
    ``unreadable``; otherwise that file is expected to label like any good one."""
    root.mkdir(parents=True, exist_ok=True)
    good = write_clip(root / "good.mp4", SynthSpec(duration=2.0, width=64, height=64)).path.read_bytes()
    expected: dict[bytes, str | None] = {b"good.mp4": None}
    broot = os.fsencode(root)

    def put(name: bytes, data: bytes) -> None:
        with open(os.path.join(broot, name), "wb") as f:
            f.write(data)

    put(b"caf\xe9 latin-1.mp4", good)  # not UTF-8: labelled all the same
    expected[b"caf\xe9 latin-1.mp4"] = None
    put(b"caf\\xe9 latin-1.mp4", good)  # what the name above escapes to: a different file
    expected[b"caf\\xe9 latin-1.mp4"] = None
    put(b"notes \xff.txt", b"skipped by the extension filter, and listed by --list-skipped")
    put(b"garbage \xff\xfe.mp4", b"not a video\n" * 50)
    expected[b"garbage \xff\xfe.mp4"] = "not_media"
    os.mkfifo(root / "fifo.mp4")
    expected[b"fifo.mp4"] = "not_a_file"
    here = os.getcwd()
    os.chdir(root)  # an AF_UNIX address is at most 107 bytes: bind by the short relative name
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind("socket.mp4")
        sock.close()  # the socket file stays
    finally:
        os.chdir(here)
    expected[b"socket.mp4"] = "not_a_file"
    try:
        os.mknod(root / "device.mp4", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # /dev/null
        expected[b"device.mp4"] = "not_a_file"
    except PermissionError:  # a container without CAP_MKNOD: the FIFO and socket stand for it
        pass
    (root / "loop.mp4").symlink_to("loop.mp4")
    expected[b"loop.mp4"] = "symlink_loop"
    (root / "dangling.mp4").symlink_to("nowhere.mp4")
    expected[b"dangling.mp4"] = "missing_file"
    (root / "folder.mkv").mkdir()
    expected[b"folder.mkv"] = "not_a_file"
    put(b"locked.mp4", good)
    os.chmod(root / "locked.mp4", 0)
    expected[b"locked.mp4"] = "unreadable" if unreadable_bites else None
    expected[_deep_file(broot, good)] = "path_too_long"
    return expected


def _deep_file(root: bytes, data: bytes) -> bytes:
    """A good video at a path over ``OVERLONG`` bytes, made through directory handles
    (no call here takes the whole path); returns it relative to ``root``."""

    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    rel: list[bytes] = []
    try:
        while len(root) + sum(len(p) + 1 for p in rel) + len(b"/deep.mp4") < OVERLONG:
            name = b"d" * 200
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, rel = child, rel + [name]
        out = os.open(b"deep.mp4", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, data)
        os.close(out)
    finally:
        os.close(fd)
    return b"/".join(rel + [b"deep.mp4"])


def grow(path: Path, data: bytes, stop: threading.Event, chunk: int = 4096) -> None:
    """Write ``data`` to ``path`` a chunk at a time until done or ``stop`` is set: a
    file still being written (a download in progress) while a job reads the folder."""

    with open(path, "wb") as f:
        for i in range(0, len(data), chunk):
            if stop.is_set():
                return
            f.write(data[i : i + chunk])
            f.flush()
            time.sleep(0.01)
