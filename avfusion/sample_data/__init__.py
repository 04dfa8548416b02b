"""The bundled real sample set: 36 ten-second clips in 9 classes (see README.md here).

``clips_dir()`` and ``labels_csv()`` give its location inside the installed package,
so ``avfusion demo`` needs no download.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def clips_dir() -> Path:
    return _HERE / "clips"


def labels_csv() -> Path:
    return _HERE / "labels.csv"


def sources_md() -> Path:
    return _HERE / "SOURCES.md"


def folds_csv() -> Path:
    return _HERE / "folds.csv"
