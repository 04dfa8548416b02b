"""Build the bundled real sample set (``avfusion/sample_data``) from Debian packages.

Each clip is a real photograph with a slow zoom/pan (Ken Burns) muxed with a real
recording of the same class, looped with short pauses to 10 s: 160×120 H.264 at
15 fps + 24 kb/s AAC mono at 22.05 kHz (so decoding also exercises resampling to 16 kHz).
The clips are committed (``avfusion/sample_data/README.md`` describes them); this
script, kept out of the installed package, documents and reproduces them from the
repository root::

    python -m tools.sample_data.build            # fetches the .debs with apt-get download
    python -m tools.sample_data.build --media-root DIR   # DIR = the packages' unpacked usr/share

Why the folds: a model can score well on a set built like this by remembering a
photo or a recording rather than recognising the class. So every recording and
every photograph belongs to exactly one of ``K`` folds, and all clips made from it
sit in that fold; fold 0 is the ``test`` split. A test clip therefore never shares
a picture or a sound with any training clip, and any fold can serve as the test
fold for cross-validation (``folds.csv``).
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image
from tqdm import tqdm

from avfusion import sample_data
from avfusion.synth import SynthSpec, quantize16, write_clip
from tools.sample_data.rcc import RccArchive

SET_DIR = Path(sample_data.__file__).resolve().parent  # where the set lives: the package's data
# Debian bookworm versions the committed clips were built from.
PACKAGES = {
    "gcompris-qt-data": "3.1-2",
    "scratch": "1.4.0.6~dfsg1-6.1",
    "0ad-data": "0.0.26-1",
    "wesnoth-1.16-data": "1:1.16.9-1",
    "lomiri-wallpapers-16.04": "20.04.0-2",
    "lomiri-wallpapers-20.04": "20.04.0-2",
    "tuxpaint-data": "1:0.9.28-sdl2-1",
    "mate-backgrounds": "1.26.0-1",
    "plasma-workspace-wallpapers": "4:5.27.5-2",
    "megaglest-data": "3.13.0-3",
    "redeclipse-data": "1.6.0-1",
    "supertuxkart-data": "1.4+dfsg-2",
}
WIDTH, HEIGHT, FPS, RATE, SECONDS = 160, 120, 15, 22_050, 10.0
K_FOLDS = 5
CLIPS_PER_CLASS = 38

_RCC = "gcompris-qt/rcc/"
_ERASE = _RCC + "erase.rcc#gcompris/src/activities/erase/resource/"
_FARM = _RCC + "explore_farm_animals.rcc#gcompris/src/activities/explore_farm_animals/resource/animals/"
_WORLD = _RCC + "explore_world_animals.rcc#gcompris/src/activities/explore_world_animals/resource/animals/"
_TOOLS = _RCC + "categorization.rcc#gcompris/src/activities/categorization/resource/images/tools/"
_RENEW = _RCC + "categorization.rcc#gcompris/src/activities/categorization/resource/images/renewable/"
_SCRATCH = "scratch/Media/"
_ZERO_AD = "games/0ad/mods/public/public.zip#audio/"
_WESNOTH = "games/wesnoth/1.16/data/core/sounds/ambient/"
_LOMIRI = "backgrounds/"
_MATE = "backgrounds/mate/nature/"
_PLASMA = "wallpapers/"
_TUX = "tuxpaint/templates/"
_DAY = _ZERO_AD + "ambient/dayscape/"
_CON = _ZERO_AD + "resource/construction/"
_LUMBER = _ZERO_AD + "resource/lumbering/"
_STEPS = _ZERO_AD + "actor/human/movement/Footsteps/"
_DETAILS = _RCC + "details.rcc#gcompris/src/activities/details/resource/image/"
_WEATHER = _ZERO_AD + "ambient/weather/"
_RIVER = _ZERO_AD + "ambient/water/"
_MEGAGLEST = "games/megaglest/"
_RE = "games/redeclipse/data/sounds/ambience/"
_STK = "games/supertuxkart/data/sfx/"
# Red Eclipse's waterfall ambiences: three freesound uploads by one recordist, one recording
_RE_WATERFALLS = tuple(f"{_RE}waterfall{n}.ogg" for n in ("", "1", "2", "3", "_huge", "_medium", "_deep", "_indoor"))

# Licences the packages' copyright files state for whole trees (the per-file
# READMEs inside GCompris bundles and the per-file stanzas below take precedence).
_TREE_LICENCES = (
    (_ZERO_AD, "2010 Wildfire Games (0 A.D.)", "CC-BY-SA-3.0"),
    (_WESNOTH, "2003-2009 David White and the Wesnoth contributors", "GPL-2+"),
    (_SCRATCH, "2011 Massachusetts Institute of Technology (Scratch 1.4)", "CC-BY-SA-3.0"),
    (_RCC, "2000, 2008 Bruno Coudoin and others (GCompris)", "GPL-3+"),
    (_TUX, "2002-2021 Bill Kendrick (Tux Paint)", "GPL-2+"),
    (_MEGAGLEST, "2001-2008 The Glest Team, 2008-2017 The MegaGlest Team (MegaGlest)", "CC-BY-SA-3.0"),
    (_RE + "morph/", 'Slawek "Q009" Blauciak (Red Eclipse)', "CC-BY-3.0"),
    (_RE, 'Quinton "quin" Reeves, Alex "blackshoe" Anguix (Red Eclipse)', "CC-BY-SA-3.0"),
)
# From lomiri-wallpapers-{16,20}.04's and mate-backgrounds' debian/copyright, the
# plasma wallpapers' metadata.json, and GCompris' farm-animal credits.
_FILE_LICENCES = {
    _LOMIRI + "picosdeeuropa_by_Aitzol_Berasategi.jpg": ("Aitzol Berasategi, 2018", "CC-BY-4.0"),
    _LOMIRI + "aitzgorri_by_Aitzol_Berasategi.jpg": ("Aitzol Berasategi, 2018", "CC-BY-4.0"),
    _LOMIRI + "Dragonfly_by_Bolly.jpg": ('"Bolly", 2018', "CC-BY-SA-4.0"),
    _LOMIRI + "seeding_by_Clements_Engelhardt.jpg": ("Clemens Engelhardt, 2018", "CC0-1.0"),
    _MATE + "Blinds.jpg": ("2008, Lennart Poettering, Andrea Cimitan", "GPL-2+"),
    _MATE + "RainDrops.jpg": ('2008, "blackcombwhistler07"', "GPL-2+"),
    _MATE + "LadyBird.jpg": ("2008, Charles Barbin", "GPL-2+"),
    _MATE + "TwoWings.jpg": ("2008, Charles Barbin", "GPL-2+"),
    _MATE + "GreenMeadow.jpg": ("2005, Timothy Schellhase; 2008, Lapo Calamandrei", "GPL-2+"),
    _MATE + "Dune.jpg": ("2007, Marco Cogoni; 2008, Hylke Bons", "GPL-2+"),
    _PLASMA + "Path/contents/images/1920x1080.jpg": ("Risto Saukonpää (KDE Plasma 'Path')", "LGPL-3"),
    _PLASMA + "ColdRipple/contents/images/1920x1080.jpg": ("Risto Saukonpää (KDE Plasma 'Cold Ripple')", "LGPL-3"),
    _PLASMA + "FallenLeaf/contents/images/1920x1080.jpg": ("Martin Klapetek (KDE Plasma 'Fallen Leaf')", "LGPL-3"),
    _LOMIRI + "life_by_Aitzol_Berasategi.jpg": ("Aitzol Berasategi, 2018", "CC-BY-4.0"),
    _LOMIRI + "Infinite-Sea_by_Aury88.jpg": ("2019, Aury88", "CC-BY-SA-3.0"),
    _LOMIRI + "Kleiber_by_Lukas_Baubkus.jpg": ("2021, Lukas Baubkus", "CC-BY-SA-3.0"),
    _FARM + "cow.webp": ("Dohduhdah, Wikimedia Commons", "Public Domain"),
    _FARM + "owl.webp": ("Lepale, Wikimedia Commons", "CC0-1.0"),
    # the details bundle's README lists its files without a Files: key
    _DETAILS + "FanoeWindmill_background.webp": ("Cnyborg (photo, CC-BY-SA-3.0, Wikimedia Commons); GCompris "
                                                 "adaptation 2000, 2008 Bruno Coudoin and others", "CC-BY-SA-4.0"),
    # Red Eclipse's debian/copyright names the freesound recordists of these files.
    _RE + "wind.ogg": ("Batuhan Bozkurt (freesound #17735)", "CC-BY-SA-3.0"),
    _RE + "river.ogg": ('2005, Mike "Acclivity" (freesound #13553)', "CC-BY-SA-3.0"),
    _RE + "creek.ogg": ('2005, Richard "RHumphries" Humphries (freesound)', "CC-BY-SA-3.0"),
    _RE + "water.ogg": ('Paul Hertz "ignotus" (freesound #14779)', "CC-BY-SA-3.0"),
    **{f: ('2007, Tim "Corsica_S" Kahn (freesound)', "CC-BY-SA-3.0") for f in _RE_WATERFALLS},
    # SuperTuxKart's debian/copyright, per file.
    _STK + "river_loop.ogg": ("2012 Adam Newns (freesound Adam_N #166310)", "CC0-1.0"),
    _STK + "waterfall_loop_2.ogg": ('2014 Leonard "VKProduktion" Graf (freesound #215711)', "CC0-1.0"),
}


@dataclass(frozen=True)
class SampleClass:
    """One label with its real sources. A tuple inside ``sounds`` or ``photos`` is
    ONE source split over several files (cut from the same recording): the split and
    the distinct-source counts treat it as one."""

    label: str
    slug: str
    photos: tuple[str | tuple[str, ...], ...]
    sounds: tuple[str | tuple[str, ...], ...]


def _seq(prefix: str, names: str) -> tuple[str, ...]:
    return tuple(prefix + n for n in names.split())


CLASSES: tuple[SampleClass, ...] = (
    SampleClass(
        "bird chirping, tweeting", "bird",
        photos=_seq(_ERASE, "heron.webp kingfisher.webp northern_harrier.webp toucan.webp spoonbills.webp "
                            "swans.webp gosling.webp penguin.webp")
        + (_WORLD + "scarlet_macaw.webp", _LOMIRI + "Kleiber_by_Lukas_Baubkus.jpg",
           _SCRATCH + "Costumes/Animals/bird-flying.gif", _FARM + "owl.webp"),
        sounds=_seq(_WESNOTH, "birds1.ogg birds2.ogg birds3.ogg morning.ogg")
        + _seq(_DAY, "day_temperate_11.ogg day_tropical_10.ogg day_tropical_11.ogg")
        # correlated files (see duplicate_pairs): one recording each
        + (_seq(_DAY, "day_temperate_12.ogg day_temperate_13.ogg day_temperate_14.ogg"),
           _seq(_DAY, "day_temperate_gen_01.ogg day_temperate_gen_02.ogg day_temperate_gen_03.ogg"))
        + (_SCRATCH + "Sounds/Animal/Bird.wav",),
    ),
    SampleClass(
        "sea waves", "sea",
        photos=_seq(_SCRATCH + "Backgrounds/", "Nature/beach-malibu.jpg Nature/wave.jpg Outdoors/boardwalk.jpg "
                    "Outdoors/city-with-water.jpg")
        + (_LOMIRI + "Infinite-Sea_by_Aury88.jpg",)
        + _seq(_TUX, "ocean_waves.jpg ocean_splash.jpg lighthouse.jpg"),
        sounds=_seq(_ZERO_AD + "ambient/water/", "wave_21.ogg wavecrash_21.ogg waverocky_21.ogg")
        + _seq(_ZERO_AD + "ambient/building/", "amb_port_10.ogg amb_port_11.ogg amb_port_12.ogg amb_port_20.ogg "
               "amb_port_21.ogg"),
    ),
    SampleClass(
        "hammering nails", "hammer",
        photos=_seq(_TOOLS, " ".join(f"hammer{i}.webp" for i in range(1, 10))),
        sounds=_seq(_CON, " ".join(f"con_wood_{i:02d}.ogg" for i in (1, 3, 5, 6, 7, 8, 9, 13, 14, 16)))
        # correlated files (see duplicate_pairs): treated as one recording
        + (_seq(_CON, " ".join(f"con_wood_{i:02d}.ogg" for i in (2, 4, 10, 11, 12, 15))),),
    ),
    SampleClass(
        "chopping wood", "chop",
        photos=_seq(_SCRATCH + "Backgrounds/Nature/", "forest.jpg tree.jpg")
        + _seq(_TUX, "redwoods_above.jpg trees_above.jpg trees_at_dusk.jpg mossy_log.jpg mossy_bark.jpg "
               "burnt_bark.jpg")
        + (_PLASMA + "Path/contents/images/1920x1080.jpg",),
        sounds=_seq(_LUMBER, " ".join(f"lumber_tree_{i:02d}.ogg" for i in (1, 7, 9, 12, 14, 16, 22, 23, 24, 25, 26)))
        # correlated files (see duplicate_pairs; groups are connected components): one recording each
        + (_seq(_LUMBER, " ".join(f"lumber_tree_{i:02d}.ogg" for i in (2, 3, 5, 6, 8, 10, 13, 15, 17, 18, 19, 20))),
           _seq(_LUMBER, "lumber_tree_04.ogg lumber_tree_11.ogg lumber_tree_21.ogg")),
    ),
    SampleClass(
        "pickaxe striking stone", "stone",
        photos=_seq(_TUX, "rocks.jpg cliff.jpg mudstone.jpg")
        + _seq(_SCRATCH + "Backgrounds/Nature/", "canyon.jpg grand-canyon.jpg garden-rock.jpg gravel-desert.jpg "
               "hill.jpg")
        + (_LOMIRI + "picosdeeuropa_by_Aitzol_Berasategi.jpg",),
        sounds=_seq(_ZERO_AD + "resource/mining/", " ".join(f"mine_stone_{i:02d}.ogg" for i in range(1, 26))),
    ),
    SampleClass(
        "footsteps", "steps",
        photos=_seq(_SCRATCH + "Backgrounds/", "Nature/pathway.jpg Outdoors/driveway.jpg Outdoors/route66.jpg "
                    "Outdoors/hallway_outdoors.jpg Outdoors/train-tracks1.jpg Outdoors/train-tracks2.jpg "
                    "Outdoors/castle.jpg Outdoors/village.jpg")
        + (_PLASMA + "ColdRipple/contents/images/1920x1080.jpg",),
        sounds=_seq(_STEPS, "Foorstep_Sand_Running.ogg Foorstep_Sand_Walking.ogg Footstep_Grass_Running.ogg "
                    "Footstep_Grass_Walking.ogg Footstep_Gravel_Running.ogg Footstep_Rock_Running.ogg")
        # correlated files (see duplicate_pairs): one recording each
        + (_seq(_STEPS, "Footstep_Gravel_Walking.ogg Footstep_Rock_Walking.ogg"),
           _seq(_STEPS, "Footstep_Wood_Running.ogg Footstep_Wood_Walking.ogg"))
        + _seq(_SCRATCH + "Sounds/Human/", "Footsteps-1.wav Footsteps-2.mp3"),
    ),
    SampleClass(
        "rustling leaves", "leaves",
        photos=_seq(_TUX, "sun_behind_leaves.jpg")
        + _seq(_MATE, "Blinds.jpg RainDrops.jpg LadyBird.jpg TwoWings.jpg")
        + (_LOMIRI + "Dragonfly_by_Bolly.jpg", _LOMIRI + "seeding_by_Clements_Engelhardt.jpg",
           _PLASMA + "FallenLeaf/contents/images/1920x1080.jpg"),
        sounds=_seq(_ZERO_AD + "resource/foraging/", " ".join(f"leaves_{i:02d}.ogg" for i in range(1, 12))),
    ),
    SampleClass(
        "harvesting crops", "harvest",
        photos=_seq(_SCRATCH + "Backgrounds/Outdoors/", "hay_field.jpg silos.jpg")
        + _seq(_TUX, "corn_maze.jpg sheep.jpg")
        + _seq(_MATE, "GreenMeadow.jpg Dune.jpg")
        + (_LOMIRI + "aitzgorri_by_Aitzol_Berasategi.jpg", _TOOLS + "sickle.webp"),
        sounds=_seq(_ZERO_AD + "resource/gathering/", " ".join(f"gather_field_{i:02d}.ogg" for i in range(1, 25))),
    ),
    SampleClass(
        # Scene level, like chopping and stone: the photos show what the wind drives.
        # windmill2 (a model mill) and windmill14 (windmill9's mill again) are left out.
        "wind noise", "wind",
        photos=_seq(_RENEW, "windmill.webp windmill1.webp windmill3.webp windmill4.webp windmill5.webp "
                            "windmill6.webp windmill7.webp windmill8.webp windmill9.webp windmill11.webp "
                            "windmill12.webp windmill13.webp windmill15.webp")
        + (_DETAILS + "FanoeWindmill_background.webp",),
        sounds=_seq(_WEATHER, "wind_11.ogg windgust_11.ogg windstorm_11.ogg snowstorm_11.ogg")
        + _seq(_RE, "wind.ogg wastewind.ogg morph/wind1.ogg morph/stormwind.ogg")
        # correlated files (see duplicate_pairs): one recording each
        + (_seq(_WEATHER, "windleaves_10.ogg windleaves_11.ogg"),
           _seq(_MEGAGLEST + "tilesets/", "winter/sounds/wind.ogg winter_forest/sounds/wind.ogg"),
           _seq(_RE, "hollowwind.ogg blowwind.ogg")),
    ),
    SampleClass(
        "stream burbling", "stream",
        photos=(_LOMIRI + "life_by_Aitzol_Berasategi.jpg",)
        + _seq(_SCRATCH + "Backgrounds/Nature/", "water-and-rocks.jpg lake.jpg")
        + _seq(_RENEW, "dam1.webp dam2.webp dam3.webp dam4.webp dam5.webp"),
        sounds=_seq(_RE, "river.ogg creek.ogg water.ogg")
        + _seq(_STK, "river_loop.ogg waterfall_loop_2.ogg")
        # correlated files (see duplicate_pairs), and Red Eclipse's waterfalls: one recording each
        + (_seq(_RIVER, "river_fast_21.ogg river_med_21.ogg river_slow_21.ogg"),
           _seq(_RIVER, "river_raging_21.ogg waterfall_31.ogg"),
           _RE_WATERFALLS),
    ),
)


def _files(source: str | tuple[str, ...]) -> tuple[str, ...]:
    return source if isinstance(source, tuple) else (source,)


def source_id(source: str | tuple[str, ...]) -> str:
    """The one name a (possibly multi-file) source goes by in the split rule."""
    return "|".join(_files(source))


class MediaRoot:
    """Reads ``source`` strings: a path under ``usr/share``, or ``container#inner``
    for a file inside a Qt ``.rcc`` bundle or a ``.zip`` archive."""

    def __init__(self, root: Path):
        self.root = root
        self._rcc: dict[str, RccArchive] = {}
        self._zip: dict[str, zipfile.ZipFile] = {}

    def read(self, source: str) -> bytes:
        if "#" not in source:
            return (self.root / source).read_bytes()
        container, inner = source.split("#", 1)
        if container.endswith(".zip"):
            if container not in self._zip:
                self._zip[container] = zipfile.ZipFile(self.root / container)
            return self._zip[container].read(inner)
        if container not in self._rcc:
            self._rcc[container] = RccArchive(self.root / container)
        return self._rcc[container].read(inner)

    def bundle_credits(self, source: str) -> tuple[str, str] | None:
        """Author and licence from the ``README`` beside a file inside a GCompris
        bundle (blocks of ``Copyright:``/``License:``/``Files:``), if it names it."""
        if "#" not in source or not source.split("#")[0].endswith(".rcc"):
            return None
        folder, name = source.rsplit("/", 1)
        try:
            text = self.read(folder + "/README").decode("utf-8", "replace")
        except KeyError:
            return None
        for block in re.split(r"\n\s*\n", text):
            fields, files, in_files = {}, [], False
            for line in block.splitlines():
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("Copyright", "License", "Files", "Source", "Comments"):
                    in_files = key.strip() == "Files"
                    fields[key.strip()] = value.strip()
                    if in_files and value.strip():
                        files += value.split()
                elif in_files and line.strip():
                    files += line.split()
            if name in files and "License" in fields:
                return fields.get("Copyright", "?"), fields["License"]
        return None


def licence_of(source: str, media: MediaRoot | None = None) -> tuple[str, str]:
    if source in _FILE_LICENCES:
        return _FILE_LICENCES[source]
    if media is not None and (bundle := media.bundle_credits(source)):
        return bundle
    for prefix, author, licence in _TREE_LICENCES:
        if source.startswith(prefix):
            return author, licence
    raise KeyError(f"no licence recorded for {source}")


def fetch_media(workdir: Path) -> Path:
    """``apt-get download`` the packages and unpack them (no system install).
    Note: 0ad-data alone is a 1.4 GB download."""
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=workdir, check=True)
    for deb in sorted(workdir.glob("*.deb")):
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
    phase, to exactly ``n`` samples; peak-normalised to 0.8. A recording longer
    than the clip gives a random 10 s window of itself."""
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
    boxes (55–100 % of the largest) with smooth easing."""
    w, h = photo.size
    full_w = min(w, h * WIDTH / HEIGHT)

    def box() -> np.ndarray:
        bw = full_w * rng.uniform(0.55, 1.0)
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


def duplicate_pairs(media: MediaRoot, threshold: float = 0.45) -> list[tuple[float, str, str]]:
    """Pairs of source files that look like the same recording or photo: |zero-lag
    correlation| of the first seconds at 4 kHz (sounds) or of 24×24 grey thumbnails
    (photos, > 0.9). Files found this way are grouped into one source in ``CLASSES``
    so the split rule counts them once. It catches copies and re-cuts that share a
    start, not different stretches of one long session (README, caveats)."""
    def corr(a: np.ndarray, b: np.ndarray) -> float:
        n = min(len(a), len(b))
        a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))

    sounds, photos = {}, {}
    for cls in CLASSES:
        for s in cls.sounds:
            sounds.update({f: decode_mono(media.read(f), 4000) for f in _files(s)})
        for p in cls.photos:
            photos.update({f: np.asarray(Image.open(io.BytesIO(media.read(f))).convert("L").resize((24, 24)),
                                         float).ravel() for f in _files(p)})
    found = []
    for table, limit in ((sounds, threshold), (photos, 0.9)):
        names = sorted(table)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if abs(r := corr(table[a], table[b])) > limit:
                    found.append((round(r, 3), a, b))
    return found


def assign_folds(items: list, k: int, rng: np.random.Generator) -> dict[int, list]:
    """Deal the shuffled sources round-robin into ``k`` folds (each in exactly one)."""
    order = [items[i] for i in rng.permutation(len(items))]
    return {f: order[f::k] for f in range(k)}


@dataclass(frozen=True)
class ClipPlan:
    clip_id: str
    label: str
    fold: int
    photo: str | tuple[str, ...]
    sound: str | tuple[str, ...]
    seed: tuple[int, ...]

    @property
    def file_name(self) -> str:
        """Named like a downloaded VGGSound clip: ``{id}_{start:06d}.mp4``."""
        return f"{self.clip_id}_000000.mp4"

    def files(self) -> tuple[str, str]:
        """The photo file and recording file this clip is made from: for a source
        shipped as several files, the first two draws of the clip's generator pick
        one (``build`` makes the same draws, in the same order)."""
        rng = np.random.default_rng(self.seed)
        photos, sounds = _files(self.photo), _files(self.sound)
        return photos[int(rng.integers(len(photos)))], sounds[int(rng.integers(len(sounds)))]


def plan(seed: int = 2026, k: int = K_FOLDS, per_class: int = CLIPS_PER_CLASS) -> list[ClipPlan]:
    """Which photo and recording each clip uses, and its fold. Within a class the
    photos and recordings are dealt into folds; a fold's clips cycle through its own
    photo × recording pairs only, so no source crosses a fold boundary."""
    plans = []
    for ci, cls in enumerate(CLASSES):
        if len(cls.photos) < k or len(cls.sounds) < k:
            raise ValueError(f"{cls.label}: needs at least {k} photos and recordings to fill {k} folds")
        rng = np.random.default_rng([seed, ci])
        photos, sounds = assign_folds(list(cls.photos), k, rng), assign_folds(list(cls.sounds), k, rng)
        number = 0
        for fold in range(k):
            pairs = [(p, s) for s in sounds[fold] for p in photos[fold]]
            pairs = [pairs[i] for i in rng.permutation(len(pairs))]
            count = per_class // k + (fold < per_class % k)
            for j in range(count):
                photo, sound = pairs[j % len(pairs)]
                number += 1
                plans.append(ClipPlan(f"avf_{cls.slug}_{number:02d}", cls.label, fold, photo, sound,
                                      (seed, ci, number)))
    return plans


def build(media: MediaRoot, out_dir: Path = SET_DIR, seed: int = 2026, reuse: bool = False) -> list[ClipPlan]:
    """Encode every planned clip and write the tables. ``reuse`` keeps a planned clip
    already in ``out_dir/clips`` (a clip depends only on its plan, its seed and its two
    sources, so adding a class re-encodes only that class's clips); clips no longer
    planned are removed either way."""
    clips_dir = out_dir / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    plans = plan(seed)
    wanted = {p.file_name for p in plans}
    for old in clips_dir.glob("*.mp4"):
        if not reuse or old.name not in wanted:
            old.unlink()
    spec = SynthSpec(container="mp4", width=WIDTH, height=HEIGHT, fps=FPS, duration=SECONDS,
                     sample_rate=RATE, channels=1, crf=33, preset="slow", audio_bitrate=24_000)
    for p in tqdm(plans, desc="clips", unit="clip"):
        if reuse and (clips_dir / p.file_name).exists():
            continue
        rng = np.random.default_rng(p.seed)
        photo_file = _files(p.photo)[int(rng.integers(len(_files(p.photo))))]
        sound_file = _files(p.sound)[int(rng.integers(len(_files(p.sound))))]
        assert (photo_file, sound_file) == p.files()
        photo = Image.open(io.BytesIO(media.read(photo_file)))
        if photo.mode in ("P", "PA", "RGBA", "LA"):  # cut-out photos on transparency: black backdrop
            photo = photo.convert("RGBA")
            backdrop = Image.new("RGBA", photo.size, (0, 0, 0, 255))
            photo = Image.alpha_composite(backdrop, photo)
        photo = photo.convert("RGB")
        sound = loop_to_length(decode_mono(media.read(sound_file), RATE), spec.num_samples, rng, RATE)
        write_clip(clips_dir / p.file_name, spec,
                   frames=ken_burns(photo, spec.num_frames, rng), waveform=quantize16(sound)[None])
    _write_tables(out_dir, plans, media)
    return plans


def _write_tables(out_dir: Path, plans: list[ClipPlan], media: MediaRoot) -> None:
    with open(out_dir / "labels.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(
            (p.clip_id, "0", p.label, "test" if p.fold == 0 else "train") for p in plans)
    with open(out_dir / "folds.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows((p.clip_id, p.fold) for p in plans)
    rows = []
    for p in plans:
        (pa, pl), (sa, sl) = licence_of(_files(p.photo)[0], media), licence_of(_files(p.sound)[0], media)
        rows.append({"clip_id": p.clip_id, "label": p.label, "fold": p.fold,
                     "split": "test" if p.fold == 0 else "train",
                     "photo": source_id(p.photo), "photo_author": pa, "photo_licence": pl,
                     "sound": source_id(p.sound), "sound_author": sa, "sound_licence": sl,
                     "photo_file": p.files()[0], "sound_file": p.files()[1]})
    with open(out_dir / "sources.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    versions = ", ".join(f"`{name}` ({version})" for name, version in PACKAGES.items())
    lines = [
        "# Sources and licences of the bundled sample clips",
        "",
        f"Built by `python -m tools.sample_data.build` from Debian bookworm's {versions}.",
        "Paths are under `/usr/share`; a path with `#` names a file inside a Qt `.rcc` bundle",
        "(GCompris) or a `.zip` (0 A.D.); `a + b` is one recording shipped as several cuts",
        "(the clip uses one of them: `sources.csv` column `sound_file`). Authors",
        "and licences come from the packages' `debian/copyright`, for GCompris photos the",
        "per-file `README` inside each bundle, and for Plasma wallpapers their `metadata.json`.",
        "Each clip is an adaptation (crop, zoom, loop,",
        "re-encode) of its two sources and carries their licences. `sources.csv` holds the",
        "same table for programs.",
        "",
        "| clip | fold | photo | photo licence | sound | sound licence |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        photo, sound = (" + ".join(f"`{f}`" for f in r[k].split("|")) for k in ("photo", "sound"))
        lines.append(f"| {r['clip_id']}_000000.mp4 | {r['fold']} | {photo} | {r['photo_licence']} "
                     f"({r['photo_author']}) | {sound} | {r['sound_licence']} ({r['sound_author']}) |")
    (out_dir / "SOURCES.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--media-root", type=Path, help="the packages' unpacked usr/share")
    parser.add_argument("--out", type=Path, default=SET_DIR)
    parser.add_argument("--reuse-clips", action="store_true",
                        help="keep planned clips already built (re-encode only new or changed classes)")
    parser.add_argument("--check-duplicates", action="store_true",
                        help="only list source files that look like copies of each other")
    args = parser.parse_args(argv)
    if args.check_duplicates:
        if not args.media_root:
            parser.error("--check-duplicates needs --media-root")
        for r, a, b in duplicate_pairs(MediaRoot(args.media_root)):
            print(f"{r:+.3f}  {a}  {b}")
        return
    if args.media_root:
        plans = build(MediaRoot(args.media_root), args.out, reuse=args.reuse_clips)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            plans = build(MediaRoot(fetch_media(Path(tmp))), args.out, reuse=args.reuse_clips)
    size = sum(p.stat().st_size for p in (args.out / "clips").glob("*.mp4"))
    print(f"wrote {len(plans)} clips, {size / 1e6:.2f} MB, to {args.out}")


if __name__ == "__main__":
    main()
