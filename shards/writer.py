"""Write WebDataset shards: one tar per shard, each sample's files adjacent.

Sample layout (see README.md): ``{key}.json`` (metadata), ``{key}.cls`` (class index,
ASCII), ``{key}.flac`` (16 kHz mono, 16-bit), ``{key}.frame0.jpg`` … ``frameN-1.jpg``.
A tar is written to a file object the caller gives (preprocess: a local temporary
file that ``avfusion.storage`` publishes under its final name only when complete).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import soundfile as sf
from PIL import Image

JPEG_QUALITY = 90
_SAFE = re.compile(r"[^A-Za-z0-9_\-]")


def wds_key(key: str) -> str:
    """A tar-safe sample key. WebDataset splits names at the first dot, so dots and
    slashes are replaced; a short hash keeps altered keys unique."""
    safe = _SAFE.sub("_", key)
    return safe if safe == key else f"{safe}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def encode_flac(waveform: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(waveform, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def encode_jpeg(frame: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass(frozen=True)
class Sample:
    """One sample, already encoded to its tar members (extension → bytes)."""

    key: str
    files: dict[str, bytes]


def encode_sample(
    key: str, waveform: np.ndarray, frames: np.ndarray, class_index: int, meta: dict, sample_rate: int
) -> Sample:
    files = {
        "json": json.dumps(meta, sort_keys=True, default=_jsonable).encode(),
        "cls": str(class_index).encode(),
        "flac": encode_flac(waveform, sample_rate),
    }
    for i, frame in enumerate(frames):
        files[f"frame{i}.jpg"] = encode_jpeg(frame)
    return Sample(wds_key(key), files)


def _jsonable(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_tar(fileobj: BinaryIO, samples: Iterable[Sample]) -> int:
    """Write samples as a tar with deterministic headers to ``fileobj`` (a binary file
    object, left open); returns the bytes written."""
    start = fileobj.tell()
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for ext, data in sample.files.items():
                info = tarfile.TarInfo(f"{sample.key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    return fileobj.tell() - start


def tar_bytes(samples: Iterable[Sample]) -> bytes:
    """The tar of ``samples`` in memory (small shards, tests)."""
    buf = io.BytesIO()
    write_tar(buf, samples)
    return buf.getvalue()
