"""Typed configuration: one dataclass per concern, loaded strictly from YAML.

``ClipSpec`` is the one definition of what a sample is (rate, length, frames, size);
every job reads it from here so preprocess, train, evaluate and label cannot drift.
A YAML file holds one mapping per concern (``clip:``, later ``download:``, ``train:``);
unknown keys and wrongly typed values are errors, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from avfusion import storage

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message says which key and why."""


# The top-level sections a config file may hold; each job reads the ones it needs and a
# recipe (``clip:`` + ``train:``) is shared by preprocess and train, so a section another
# job reads is not an error, a misspelt one (``clipp:``) is.
SECTIONS = ("clip", "download", "limits", "preprocess", "governor", "train")


@dataclass(frozen=True, kw_only=True)
class Bounds:
    """The values a numeric config field allows: ``ge``/``gt`` below, ``le`` above."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None

    def allows(self, value: float) -> bool:
        return (
            (isinstance(value, int) or math.isfinite(value))  # an int may be too big for a float
            and (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
        )

    def describe(self, integer: bool) -> str:
        kind = "an integer" if integer else "a number"
        if self.ge is not None and self.le is not None:
            return f"{kind} {_num(self.ge)}..{_num(self.le)}"
        ops = ((">=", self.ge), (">", self.gt), ("<=", self.le))
        return f"{kind} " + " and ".join(f"{op} {_num(v)}" for op, v in ops if v is not None)


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else repr(value)


def bounded(
    default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None
) -> Any:
    """A dataclass field whose value must lie in the given range (``None`` passes when
    the field's type allows it). The range lives here, beside the default: ``from_dict``
    (YAML and flags alike) and ``check_bounds`` (every construction) both read it."""
    return field(default=default, metadata={"bounds": Bounds(ge=ge, gt=gt, le=le)})


def _is_int_field(hint: Any) -> bool:
    arms = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return int in arms and float not in arms


def _bounds_error(key: str, value: Any, bounds: Bounds, integer: bool) -> ConfigError:
    allowed = bounds.describe(integer)
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return ConfigError(
            f"{key}: {shown} is not {'an integer' if integer else 'a number'}; allowed: {allowed}"
        )
    if integer and not isinstance(value, int):
        return ConfigError(f"{key}: {shown} is not an integer; allowed: {allowed}")
    return ConfigError(f"{key}: {shown} is out of range; allowed: {allowed}")


def check_bounds(obj: DataclassInstance, section: str) -> None:
    """Every ``bounded`` field of ``obj`` within its range, else ``ConfigError`` naming
    ``section.field``, the value and what is allowed. Configs call it from
    ``__post_init__``, so a value is checked however the config was built."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        bounds = f.metadata.get("bounds")
        if bounds is None:
            continue
        value = getattr(obj, f.name)
        if value is None and type(None) in typing.get_args(hints[f.name]):
            continue
        integer = _is_int_field(hints[f.name])
        number = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
        if not number or not bounds.allows(value):
            raise _bounds_error(f"{section}.{f.name}" if section else f.name, value, bounds, integer)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)  # resolved once per class: configs are built often


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
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{key}: {value!r} is not a finite number") from None
    if hint is Path and isinstance(value, str):
        return Path(value)
    wrong_type = isinstance(hint, type) and not isinstance(value, hint)
    if wrong_type or (hint in (int, float) and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
    if hint is float and not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys, bad types and
    values outside a field's bounds (the message names ``prefix.key``)."""
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping of keys, got {data!r}")
    data = dict(data or {})
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(map(str, set(data) - set(fields)))
    if unknown:
        raise ConfigError(f"{prefix or cls.__name__}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    values = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        bounds = fields[k].metadata.get("bounds")
        try:
            values[k] = _check_type(key, v, hints[k])
        except ConfigError:
            if bounds is None:
                raise
            raise _bounds_error(key, v, bounds, _is_int_field(hints[k])) from None
        if bounds is not None and values[k] is not None and not bounds.allows(values[k]):
            raise _bounds_error(key, v, bounds, _is_int_field(hints[k]))
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:  # a config's own cross-field check
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from exc


@dataclass(frozen=True)
class ClipSpec:
    """One sample: ``clip_seconds`` of 16 kHz mono audio and ``num_frames`` RGB frames.

    Frames are square (``frame_size``²): short side resized, centre crop, which is what
    ResNet-style encoders expect and keeps shards a fixed size per sample.
    """

    sample_rate: int = bounded(16_000, ge=1_000, le=192_000)
    clip_seconds: float = bounded(10.0, gt=0, le=3600)
    num_frames: int = bounded(8, ge=1, le=512)
    frame_size: int = bounded(224, ge=16, le=4096)

    def __post_init__(self) -> None:
        check_bounds(self, "clip")

    @property
    def num_samples(self) -> int:
        """Audio samples per clip: the waveform is padded or cut to exactly this."""
        return round(self.sample_rate * self.clip_seconds)


@dataclass(frozen=True, kw_only=True)
class ExecutorSpec:
    """Where a job's work runs, as its flags say (``--concurrency``, ``--num-cpus``,
    ``--ray-workers``; None: the executor's default). Jobs build one to check the
    flags before any work starts."""

    concurrency: int | None = bounded(None, ge=1, le=100_000)
    num_cpus: int | None = bounded(None, ge=1, le=100_000)
    ray_workers: int | None = bounded(None, ge=1, le=100_000)

    def __post_init__(self) -> None:
        check_bounds(self, "executor")


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


CONFIG_MAX_BYTES = 1 << 20  # the vggsound recipe is 2 kB


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without aliases: a config may be someone else's file, and a few
    hundred bytes of nested aliases expand to gigabytes (the "billion laughs"); no
    config of ours needs one."""

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"YAML aliases (*{event.anchor}) are not accepted in a config")
        return super().compose_node(parent, index)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file or preset; an empty file is an empty mapping. Its top
    level maps sections (``SECTIONS``) to mappings: anything else is a ``ConfigError``."""
    path = resolve_config(path)
    try:
        loaded = yaml.load(storage.read_small(str(path), CONFIG_MAX_BYTES, "file"), _ConfigLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())  # YAML's messages span lines; ours is one
        raise ConfigError(f"cannot read config {path}: {detail}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(loaded).__name__}")
    unknown = sorted(str(k) for k in loaded if k not in SECTIONS)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; allowed: {list(SECTIONS)}")
    for name, body in loaded.items():
        if body is not None and not isinstance(body, Mapping):
            raise ConfigError(f"{name}: expected a mapping of keys, got {body!r}")
    return loaded


def load_section(cls: type[T], path: str | Path | None, section: str, **overrides: Any) -> T:
    """``cls`` from ``path``'s ``section`` (defaults when no file), then ``overrides``
    (the flags: ``None`` means not given), checked together by ``from_dict``."""
    data = dict(load_yaml(path).get(section) or {}) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, data, prefix=section)
