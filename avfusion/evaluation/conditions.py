"""Evaluation conditions: which corruptions, at which severities, a clip is seen under.

A condition is a tuple of (corruption, severity); the empty tuple is clean input
(``NORMAL``). Each clip is corrupted per condition with a generator seeded by
(seed, condition name, clip key), so results do not depend on batching or order and
the same clip is compared across conditions. Conditions are parsed from text once (the
``--conditions`` flag) and passed around as objects; their names appear only in what
is written out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from avfusion.corruptions import CORRUPTIONS, apply

PAIRS = (
    ("muted_audio", "gaussian_blur"),
    ("audio_gaussian_noise", "video_gaussian_noise"),
    ("traffic_noise", "fog"),
)


@dataclass(frozen=True, eq=False)
class Condition:
    """Corruptions applied in order. Two conditions are equal when their names are (the
    name seeds the corruption, and an ungraded corruption ignores its severity)."""

    corruptions: tuple[tuple[str, int], ...] = ()

    @property
    def name(self) -> str:
        """``normal``, ``muted_audio``, ``gaussian_blur@3``, ``muted_audio+fog@2``."""
        if not self.corruptions:
            return "normal"
        return "+".join(n if not CORRUPTIONS[n].graded else f"{n}@{s}" for n, s in self.corruptions)

    @property
    def corruption(self) -> str | None:
        """The corruption of a single-corruption condition (its family across severities); else None."""
        return self.corruptions[0][0] if len(self.corruptions) == 1 else None

    @property
    def modality(self) -> str | None:
        """``audio`` or ``video``: what a single-corruption condition corrupts; else None."""
        return CORRUPTIONS[self.corruption].modality if self.corruption else None

    @property
    def severity(self) -> int | None:
        """The severity (1–5) of a single graded corruption; None for normal, ungraded and combined."""
        if self.corruption and CORRUPTIONS[self.corruption].graded:
            return self.corruptions[0][1]
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Condition) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    @classmethod
    def parse(cls, text: str) -> Condition:
        """``normal``, ``muted_audio``, ``gaussian_blur@3``, ``muted_audio+fog@2``."""
        if text == "normal":
            return cls()
        parts = []
        for item in text.split("+"):
            name, _, sev = item.partition("@")
            if name not in CORRUPTIONS:
                raise ValueError(f"unknown corruption {name!r}; known: {sorted(CORRUPTIONS)}")
            parts.append((name, int(sev) if sev else 3))
        return cls(tuple(parts))


NORMAL = Condition()


def parse_conditions(text: str) -> tuple[Condition, ...]:
    """A comma-separated list, e.g. ``normal,muted_audio,gaussian_blur@5``."""
    return tuple(Condition.parse(c.strip()) for c in text.split(","))


def conditions(suite: str) -> list[Condition]:
    """``default``: normal, missing modalities, everything at severity 3, three pairs;
    ``full``: the same with every graded corruption at severities 1–5."""
    severities = range(1, 6) if suite == "full" else (3,)
    out = [Condition()]
    out += [Condition(((n, 1),)) for n, c in CORRUPTIONS.items() if not c.graded]
    out += [Condition(((n, s),)) for n, c in CORRUPTIONS.items() if c.graded for s in severities]
    out += [Condition(((a, 3), (b, 3))) for a, b in PAIRS]
    if suite not in ("default", "full"):
        raise ValueError(f"suite must be default or full, got {suite!r}")
    return out


def corrupt(sample: dict, condition: Condition, seed: int) -> dict:
    """A copy of a decoded sample under ``condition``, seeded by (seed, condition, clip key)."""
    digest = hashlib.sha1(f"{seed}|{condition.name}|{sample['key']}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    for name, severity in condition.corruptions:
        sample = apply(name, sample, severity, rng)
    return sample
