import dataclasses

import pytest

from avfusion.config import ClipSpec, ConfigError, from_dict, load_section


def test_defaults_match_vggsound_protocol():
    spec = ClipSpec()
    assert (spec.sample_rate, spec.clip_seconds, spec.num_frames) == (16_000, 10.0, 8)
    assert spec.num_samples == 160_000


def test_yaml_section_overrides_defaults(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("clip:\n  frame_size: 112\n  clip_seconds: 5\nother: {x: 1}\n")
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
        ({"frame_sz": 1}, "unknown key"),
        ({"frame_size": "big"}, "expected int"),
        ({"frame_size": True}, "expected int"),
        ({"frame_size": 0}, "must be positive"),
        ({"clip_seconds": -1}, "clip_seconds"),
    ],
)
def test_bad_values_are_rejected_with_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(ClipSpec, data, prefix="clip")


def test_non_mapping_file_is_rejected(tmp_path):
    (tmp_path / "l.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_section(ClipSpec, tmp_path / "l.yaml", "clip")


def test_round_trip_through_dict():
    spec = ClipSpec(frame_size=96)
    assert from_dict(ClipSpec, dataclasses.asdict(spec)) == spec
