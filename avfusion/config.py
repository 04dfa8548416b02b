"""Typed configuration: one dataclass per concern, loaded strictly from YAML.

``ClipSpec`` is the one definition of what a sample is (rate, length, frames, size);
every job reads it from here so preprocess, train, evaluate and label cannot drift.
A YAML file holds one mapping per concern (``clip:``, later ``download:``, ``train:``);
unknown keys and wrongly typed values are errors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from avfusion import storage

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message says which key and why."""


@dataclass(frozen=True)
class ClipSpec:
    """One sample: ``clip_seconds`` of 16 kHz mono audio and ``num_frames`` RGB frames.

    Frames are square (``frame_size``²): short side resized, centre crop, which is what
    ResNet-style encoders expect and keeps shards a fixed size per sample.
    """

    sample_rate: int = 16_000
    clip_seconds: float = 10.0
    num_frames: int = 8
    frame_size: int = 224

    def __post_init__(self) -> None:
        for name in ("sample_rate", "num_frames", "frame_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"clip.{name} must be positive, got {getattr(self, name)}")
        if not 0 < self.clip_seconds <= 3600:
            raise ConfigError(f"clip.clip_seconds must be in (0, 3600], got {self.clip_seconds}")

    @property
    def num_samples(self) -> int:
        """Audio samples per clip: the waveform is padded or cut to exactly this."""
        return round(self.sample_rate * self.clip_seconds)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            if arm is type(None) and value is None:
                return None
            try:
                return _check_type(key, value, arm)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} matches none of {hint}")
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_hint, *_) = typing.get_args(hint) or (Any,)
        items = [_check_type(f"{key}[{i}]", v, item_hint) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is Any:
        return value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_dict(hint, value, prefix=key)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    wrong_type = isinstance(hint, type) and not isinstance(value, hint)
    if wrong_type or (hint in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and bad types."""
    data = dict(data or {})
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{prefix or cls.__name__}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    values = {k: _check_type(f"{prefix}.{k}" if prefix else k, v, hints[k]) for k, v in data.items()}
    return cls(**values)


PRESETS_DIR = Path(__file__).resolve().parent / "configs"


def presets() -> list[str]:
    """Names of the configurations shipped inside the package (``--config small``)."""
    files = storage.list_files(str(PRESETS_DIR), "*.yaml")
    return sorted(storage.basename(f)[: -len(".yaml")] for f in files)


def resolve_config(name_or_path: str | Path) -> str | Path:
    """A preset name (``small``, ``vggsound``) → its file inside the package; anything
    else is a path, returned as given. A file of that name in the working directory
    wins over a preset only when it exists."""
    text = str(name_or_path)
    if text in presets() and not storage.exists(text):
        return PRESETS_DIR / f"{text}.yaml"
    return name_or_path


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file or preset; an empty file is an empty mapping."""
    path = resolve_config(path)
    try:
        loaded = yaml.safe_load(storage.read_text(str(path)))  # a local path or a URL
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def load_section(cls: type[T], path: str | Path | None, section: str, **overrides: Any) -> T:
    """``cls`` from ``path``'s ``section`` (defaults when no file), then ``overrides``."""
    data = dict(load_yaml(path).get(section) or {}) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, data, prefix=section)
