"""Build the bundled real sample set from Debian's ``gcompris-qt-data`` and ``scratch``.

Each clip is a real photograph with a slow zoom/pan (Ken Burns) muxed with a real
recording of the same class, looped with short pauses to 10 s: 320×240 H.264 at
15 fps + 32 kb/s AAC at 22.05 kHz (so decoding also exercises resampling to 16 kHz).
The clips are committed; this script documents and reproduces them::

    python -m avfusion.sample_data.build            # fetches the .debs with apt-get download
    python -m avfusion.sample_data.build --media-root DIR   # DIR holds the unpacked packages

The set is tiny and leaky by construction (one photo per animal class, recordings
reused across clips): it exists to run the whole pipeline on real media, not to
measure generalisation.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from avfusion.sample_data.rcc import RccArchive
from avfusion.synth import SynthSpec, quantize16, write_clip

HERE = Path(__file__).resolve().parent
PACKAGES = ("gcompris-qt-data", "scratch")
WIDTH, HEIGHT, FPS, RATE, SECONDS = 320, 240, 15, 22_050, 10.0

_FARM = "gcompris-qt/rcc/explore_farm_animals.rcc#gcompris/src/activities/explore_farm_animals/resource/animals/"
_MEMORY = "gcompris-qt/rcc/memory-sound.rcc#gcompris/src/activities/memory-sound/resource/"
_SCRATCH = "scratch/Media/"

# Licences as stated by the packages' copyright files and the bundles' README/Licence.txt.
LICENCES = {
    _FARM + "cat.webp": ("Loliloli, Wikimedia Commons", "Public Domain"),
    _FARM + "chicken.webp": ("Tranquilles, Wikimedia Commons", "Public Domain"),
    _FARM + "cow.webp": ("Dohduhdah, Wikimedia Commons", "Public Domain"),
    _FARM + "dog.webp": ("Hans Kemperman, Wikimedia Commons", "Public Domain"),
    _FARM + "duck.webp": ("Bernard Spragg, Wikimedia Commons", "CC0-1.0"),
    _FARM + "horse.webp": ("Seth Zeigler, Wikimedia Commons", "CC0-1.0"),
    _FARM + "owl.webp": ("Lepale, Wikimedia Commons", "CC0-1.0"),
}
_GCOMPRIS_SOUNDS = ("2000, 2008 Bruno Coudoin and others (GCompris)", "GPL-3.0")
_MEMORY_SOUNDS = ("GCompris memory-sound authors (see Licence.txt in the bundle)", "Free Art License 1.3")
_SCRATCH_MEDIA = ("2011 Massachusetts Institute of Technology (Scratch 1.4)", "CC-BY-SA-3.0")


@dataclass(frozen=True)
class SampleClass:
    label: str
    photos: tuple[str, ...]
    sounds: tuple[str, ...]
    clips: int


CLASSES: tuple[SampleClass, ...] = (
    SampleClass("dog barking", (_FARM + "dog.webp",),
                (_FARM + "dog.ogg", _SCRATCH + "Sounds/Animal/Dog1.wav", _SCRATCH + "Sounds/Animal/Dog2.wav",
                 _MEMORY + "LRBark_1_LA_cut.ogg", _MEMORY + "LRBark_3_LA_cut.ogg"), 5),
    SampleClass("cat meowing", (_FARM + "cat.webp",),
                (_FARM + "cat.ogg", _SCRATCH + "Sounds/Animal/Meow.wav", _SCRATCH + "Sounds/Animal/Kitten.wav",
                 _SCRATCH + "Sounds/Animal/Cat.mp3"), 4),
    SampleClass("horse neighing", (_FARM + "horse.webp",),
                (_FARM + "horse.ogg", _SCRATCH + "Sounds/Animal/Horse.wav"), 4),
    SampleClass("chicken crowing", (_FARM + "chicken.webp",),
                (_FARM + "chickens.ogg", _SCRATCH + "Sounds/Animal/Rooster.wav"), 4),
    SampleClass("duck quacking", (_FARM + "duck.webp",),
                (_FARM + "duck.ogg", _SCRATCH + "Sounds/Animal/Duck.wav"), 4),
    SampleClass("owl hooting", (_FARM + "owl.webp",),
                (_FARM + "owl.ogg", _SCRATCH + "Sounds/Animal/Owl.wav"), 4),
    SampleClass("cattle, bovinae cowbell", (_FARM + "cow.webp",), (_FARM + "cow.ogg",), 3),
    SampleClass("car passing by",
                (_SCRATCH + "Backgrounds/Outdoors/route66.jpg", _SCRATCH + "Backgrounds/Outdoors/parking-ramp.jpg"),
                (_SCRATCH + "Sounds/Effects/CarPassing.wav", _MEMORY + "LRStartAndStopCarEngine1LACut.ogg"), 4),
    SampleClass("railroad car, train wagon",
                (_SCRATCH + "Backgrounds/Outdoors/train-tracks1.jpg", _SCRATCH + "Backgrounds/Outdoors/train-tracks2.jpg"),
                (_MEMORY + "LRTrain_slowing_down_01_LA_cut.ogg",), 4),
)


def licence_of(source: str) -> tuple[str, str]:
    if source in LICENCES:
        return LICENCES[source]
    if source.startswith(_SCRATCH):
        return _SCRATCH_MEDIA
    if source.startswith(_MEMORY):
        return _MEMORY_SOUNDS
    return _GCOMPRIS_SOUNDS


class MediaRoot:
    """Reads ``source`` strings: a path under ``/usr/share`` or ``bundle.rcc#inner``."""

    def __init__(self, root: Path):
        self.root = root
        self._bundles: dict[str, RccArchive] = {}

    def read(self, source: str) -> bytes:
        if "#" in source:
            bundle, inner = source.split("#", 1)
            if bundle not in self._bundles:
                self._bundles[bundle] = RccArchive(self.root / bundle)
            return self._bundles[bundle].read(inner)
        return (self.root / source).read_bytes()


def fetch_media(workdir: Path) -> Path:
    """``apt-get download`` the two packages and unpack them (no system install)."""
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=workdir, check=True)
    for deb in workdir.glob("*.deb"):
        subprocess.run(["dpkg", "-x", str(deb), str(workdir / "root")], check=True)
    return workdir / "root" / "usr" / "share"


def decode_mono(data: bytes, rate: int) -> np.ndarray:
    """Any audio file's bytes → mono float32 at ``rate``."""
    resampler = av.AudioResampler(format="fltp", layout="mono", rate=rate)
    chunks = []
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(audio=0):
            chunks += [f.to_ndarray()[0] for f in resampler.resample(frame)]
        chunks += [f.to_ndarray()[0] for f in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.float32)


def loop_to_length(sound: np.ndarray, n: int, rng: np.random.Generator, rate: int) -> np.ndarray:
    """Repeat the recording with 0.3–1.5 s pauses (an event recurring), from a random
    phase, to exactly ``n`` samples; peak-normalised to 0.8."""
    sound = sound / max(float(np.abs(sound).max()), 1e-6) * 0.8
    pieces, total = [], 0
    while total < n + len(sound):
        pieces += [sound, np.zeros(int(rng.uniform(0.3, 1.5) * rate), np.float32)]
        total += len(pieces[-2]) + len(pieces[-1])
    looped = np.concatenate(pieces)
    start = int(rng.integers(0, max(1, len(looped) - n)))
    return looped[start:start + n]


def ken_burns(photo: Image.Image, n: int, rng: np.random.Generator) -> np.ndarray:
    """A slow zoom and pan over the photo: the crop box moves between two random 4:3
    boxes (60–100 % of the largest) with smooth easing."""
    w, h = photo.size
    full_w = min(w, h * WIDTH / HEIGHT)

    def box() -> np.ndarray:
        bw = full_w * rng.uniform(0.6, 1.0)
        bh = bw * HEIGHT / WIDTH
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        return np.array([x, y, x + bw, y + bh])

    a, b = box(), box()
    frames = np.empty((n, HEIGHT, WIDTH, 3), np.uint8)
    for i in range(n):
        t = i / max(n - 1, 1)
        ease = t * t * (3 - 2 * t)
        crop = tuple(float(v) for v in a + (b - a) * ease)
        frames[i] = np.asarray(photo.resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR, box=crop))
    return frames


def build(media: MediaRoot, out_dir: Path = HERE, seed: int = 2026) -> list[tuple[str, str, str]]:
    clips_dir = out_dir / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    spec = SynthSpec(container="mp4", width=WIDTH, height=HEIGHT, fps=FPS, duration=SECONDS,
                     sample_rate=RATE, channels=1, crf=30, preset="slow", audio_bitrate=32_000)
    rows, sources = [], []
    for ci, cls in enumerate(CLASSES):
        slug = cls.label.split(",")[0].split()[0]
        for j in range(cls.clips):
            rng = np.random.default_rng([seed, ci, j])
            photo_src = cls.photos[j % len(cls.photos)]
            sound_src = cls.sounds[j % len(cls.sounds)]
            photo = Image.open(io.BytesIO(media.read(photo_src))).convert("RGB")
            sound = loop_to_length(decode_mono(media.read(sound_src), RATE), spec.num_samples, rng, RATE)
            clip_id = f"avf_{slug}_{j + 1:02d}"
            write_clip(clips_dir / f"{clip_id}_000000.mp4", spec,
                       frames=ken_burns(photo, spec.num_frames, rng), waveform=quantize16(sound)[None])
            split = "test" if j == cls.clips - 1 else "train"
            rows.append((clip_id, "0", cls.label, split))
            sources.append((f"{clip_id}_000000.mp4", photo_src, sound_src))
    with open(out_dir / "labels.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    _write_sources(out_dir / "SOURCES.md", sources)
    return sources


def _write_sources(path: Path, sources: list[tuple[str, str, str]]) -> None:
    lines = [
        "# Sources and licences of the bundled sample clips",
        "",
        "Built by `python -m avfusion.sample_data.build` from Debian bookworm's",
        "`gcompris-qt-data` (3.1-2) and `scratch` (1.4.0.6~dfsg1-6.1). A path with `#`",
        "names a file inside a Qt `.rcc` bundle. Each clip is an adaptation (crop, zoom,",
        "loop, re-encode) of its two sources and carries their licences.",
        "",
        "| clip | photo | photo licence | sound | sound licence |",
        "|---|---|---|---|---|",
    ]
    for clip, photo, sound in sources:
        (pa, pl), (sa, sl) = licence_of(photo), licence_of(sound)
        lines.append(f"| {clip} | `{photo}` | {pl} ({pa}) | `{sound}` | {sl} ({sa}) |")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media-root", type=Path, help="unpacked usr/share of the two packages")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    if args.media_root:
        sources = build(MediaRoot(args.media_root), args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            sources = build(MediaRoot(fetch_media(Path(tmp))), args.out)
    size = sum(p.stat().st_size for p in (args.out / "clips").glob("*.mp4"))
    print(f"wrote {len(sources)} clips, {size / 1e6:.2f} MB, to {args.out}")


if __name__ == "__main__":
    main()
