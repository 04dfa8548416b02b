import dataclasses

import pytest

from avfusion.config import ClipSpec, ConfigError, from_dict, load_section


def test_defaults_match_vggsound_protocol():
    spec = ClipSpec()
    assert (spec.sample_rate, spec.clip_seconds, spec.num_frames) == (16_000, 10.0, 8)
    assert spec.num_samples == 160_000


def test_yaml_section_overrides_defaults(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("clip:\n  frame_size: 112\n  clip_seconds: 5\ntrain: {epochs: 1}\n")
    spec = load_section(ClipSpec, cfg, "clip")
    assert spec == ClipSpec(frame_size=112, clip_seconds=5.0)
    assert isinstance(spec.clip_seconds, float)
    assert spec.num_samples == 80_000


def test_explicit_overrides_win_over_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("clip:\n  frame_size: 112\n")
    assert load_section(ClipSpec, cfg, "clip", frame_size=64, num_frames=None).frame_size == 64
    assert load_section(ClipSpec, None, "clip") == ClipSpec()


def test_empty_file_gives_defaults(tmp_path):
    (tmp_path / "e.yaml").write_text("")
    assert load_section(ClipSpec, tmp_path / "e.yaml", "clip") == ClipSpec()


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"frame_sz": 1},
            "clip: unknown key(s) ['frame_sz']; "
            "allowed: ['clip_seconds', 'frame_size', 'num_frames', 'sample_rate']",
        ),
        ({"frame_size": "big"}, "clip.frame_size: 'big' is not an integer; allowed: an integer 16..4096"),
        ({"frame_size": True}, "clip.frame_size: True is not an integer; allowed: an integer 16..4096"),
        ({"frame_size": 2.0}, "clip.frame_size: 2.0 is not an integer; allowed: an integer 16..4096"),
        ({"frame_size": 0}, "clip.frame_size: 0 is out of range; allowed: an integer 16..4096"),
        ({"frame_size": 1_000_000}, "clip.frame_size: 1000000 is out of range; allowed: an integer 16..4096"),
        (
            {"num_frames": 100_000_000},
            "clip.num_frames: 100000000 is out of range; allowed: an integer 1..512",
        ),
        ({"clip_seconds": -1}, "clip.clip_seconds: -1 is out of range; allowed: a number > 0 and <= 3600"),
        (
            {"clip_seconds": float("nan")},
            "clip.clip_seconds: nan is out of range; allowed: a number > 0 and <= 3600",
        ),
        (
            {"clip_seconds": float("inf")},
            "clip.clip_seconds: inf is out of range; allowed: a number > 0 and <= 3600",
        ),
        ({"sample_rate": 10}, "clip.sample_rate: 10 is out of range; allowed: an integer 1000..192000"),
        (
            {"frame_size": 10**400},  # beyond a float: still compared, and shown cut short
            "clip.frame_size: " + "1" + "0" * 36 + "... is out of range; allowed: an integer 16..4096",
        ),
    ],
)
def test_bad_values_are_rejected_with_the_key(data, message):
    with pytest.raises(ConfigError) as exc:
        from_dict(ClipSpec, data, prefix="clip")
    assert str(exc.value) == message


def test_bounds_hold_however_a_config_is_built():
    """The same bounds for a value built in Python as for YAML and flags: one place."""
    with pytest.raises(
        ConfigError, match=r"^clip.frame_size: 0 is out of range; allowed: an integer 16..4096$"
    ):
        ClipSpec(frame_size=0)
    with pytest.raises(ConfigError, match=r"^clip.num_frames: 1.5 is not an integer"):
        ClipSpec(num_frames=1.5)  # type: ignore[arg-type]
    assert ClipSpec(frame_size=16, num_frames=512, clip_seconds=3600).frame_size == 16  # ends included


def test_bounded_field_declares_its_range_and_none_passes_where_the_type_allows_it():
    from dataclasses import dataclass

    from avfusion.config import bounded, check_bounds

    @dataclass(frozen=True)
    class Knobs:
        size: int = bounded(4, ge=1, le=8)
        rate: float = bounded(1.0, gt=0)
        cap: int | None = bounded(None, ge=0)

        def __post_init__(self) -> None:
            check_bounds(self, "knobs")

    assert from_dict(Knobs, {"size": 8, "rate": 2, "cap": None}, prefix="knobs") == Knobs(8, 2.0, None)
    for data, message in [
        ({"rate": 0}, "knobs.rate: 0 is out of range; allowed: a number > 0"),
        ({"cap": -1}, "knobs.cap: -1 is out of range; allowed: an integer >= 0"),
        ({"size": "abc"}, "knobs.size: 'abc' is not an integer; allowed: an integer 1..8"),
    ]:
        with pytest.raises(ConfigError) as exc:
            from_dict(Knobs, data, prefix="knobs")
        assert str(exc.value) == message


@pytest.mark.parametrize(
    "text, message",
    [
        ("clipp:\n  frame_size: 64\n", "unknown section(s) ['clipp']"),
        ("clip: [1, 2]\n", "clip: expected a mapping of keys, got [1, 2]"),
        ("clip: 3\n", "clip: expected a mapping of keys, got 3"),
    ],
)
def test_unknown_or_malformed_sections_are_errors(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_section(ClipSpec, tmp_path / "c.yaml", "clip")
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_non_mapping_file_is_rejected(tmp_path):
    (tmp_path / "l.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_section(ClipSpec, tmp_path / "l.yaml", "clip")


def test_round_trip_through_dict():
    spec = ClipSpec(frame_size=96)
    assert from_dict(ClipSpec, dataclasses.asdict(spec)) == spec
