"""The bundled real sample set: 380 ten-second clips in 10 classes (see README.md here).

``clips_dir()`` and ``labels_csv()`` give its location inside the installed package,
so ``avfusion demo`` needs no download. ``folds_csv()``/``read_folds()`` give the
5-fold assignment in which no recording and no photograph crosses a fold boundary
(fold 0 is the ``test`` split of ``labels.csv``); ``sources.csv`` says which photo
and which recording each clip was made from, and under which licences.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def clips_dir() -> Path:
    return _HERE / "clips"


def noise_dir() -> Path:
    """Real background recordings for the environmental-noise corruptions (not clips of the set)."""
    return _HERE / "noise"


def labels_csv() -> Path:
    return _HERE / "labels.csv"


def sources_md() -> Path:
    return _HERE / "SOURCES.md"


def sources_csv() -> Path:
    return _HERE / "sources.csv"


def folds_csv() -> Path:
    return _HERE / "folds.csv"


def read_folds(path: str | Path | None = None) -> dict[str, int]:
    """``clip_id -> fold`` from ``folds.csv`` (no header: ``clip_id,fold``). Use fold
    ``f`` as the test set and the rest for training to cross-validate without any
    shared recording or photograph between the two. (The one folds reader is
    ``avfusion.loader.read_folds``; this names the bundled file.)"""
    from avfusion.loader import read_folds as read

    return read(str(path or folds_csv()))
