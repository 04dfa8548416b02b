"""Read Qt binary resource bundles (``.rcc``), enough to pull files out of them.

The bundled real sample set is built from Debian's ``gcompris-qt-data``, which ships
its sounds and photos only inside such bundles. Format (Qt's ``rcc`` writer):
header ``qres``, version, tree/data/names offsets (+ flags for v3); tree nodes of
14 bytes (v1) or 22 bytes (v2+, with a modification time); names as length + hash +
UTF-16BE; data as a 4-byte size then the bytes, zlib (``qCompress``: 4-byte size
prefix) or zstd compressed when the node says so.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

_DIRECTORY = 0x02
_COMPRESSED_ZLIB = 0x01
_COMPRESSED_ZSTD = 0x04


class RccError(ValueError):
    """The file is not a Qt resource bundle we can read."""


@dataclass(frozen=True)
class RccEntry:
    path: str
    flags: int
    data_offset: int


class RccArchive:
    """Random access to the files inside one ``.rcc`` bundle."""

    def __init__(self, path: str | Path):
        self._blob = Path(path).read_bytes()
        blob = self._blob
        if blob[:4] != b"qres":
            raise RccError(f"{path}: not a Qt resource bundle (magic {blob[:4]!r})")
        self.version, self._tree, self._data, self._names = struct.unpack(">IIII", blob[4:20])
        if self.version not in (1, 2, 3):
            raise RccError(f"{path}: unsupported rcc version {self.version}")
        self._node_size = 14 if self.version == 1 else 22
        self.entries: dict[str, RccEntry] = {}
        self._walk(0, "")

    def _name(self, offset: int) -> str:
        start = self._names + offset
        (length,) = struct.unpack(">H", self._blob[start : start + 2])
        raw = self._blob[start + 6 : start + 6 + 2 * length]
        return raw.decode("utf-16-be")

    def _walk(self, node: int, prefix: str) -> None:
        base = self._tree + node * self._node_size
        name_off, flags = struct.unpack(">IH", self._blob[base : base + 6])
        name = self._name(name_off) if node else ""
        path = f"{prefix}/{name}" if prefix else name
        if flags & _DIRECTORY:
            count, first = struct.unpack(">II", self._blob[base + 6 : base + 14])
            for child in range(first, first + count):
                self._walk(child, path)
        else:
            (data_off,) = struct.unpack(">I", self._blob[base + 10 : base + 14])
            self.entries[path] = RccEntry(path, flags, data_off)

    def read(self, path: str) -> bytes:
        entry = self.entries[path]
        start = self._data + entry.data_offset
        (size,) = struct.unpack(">I", self._blob[start : start + 4])
        payload = self._blob[start + 4 : start + 4 + size]
        if entry.flags & _COMPRESSED_ZLIB:
            return zlib.decompress(payload[4:])
        if entry.flags & _COMPRESSED_ZSTD:
            raise RccError(f"{path}: zstd-compressed entry; install a zstd reader")
        return payload

    def names(self) -> list[str]:
        return sorted(self.entries)
