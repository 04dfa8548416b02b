"""Decode exactness against the synthetic generator, and classified failures."""

import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

from avfusion.config import ClipSpec
from avfusion.decode import DecodeLimits, decode_clip, frame_times
from avfusion.probe import MediaError
from avfusion.synth import SynthSpec, read_frame_index, tone_waveform, write_clip
from tests.corpus import make_malformed_corpus

SPEC = ClipSpec(frame_size=96)


def _nearest(times, targets):
    return [int(np.argmin(np.abs(np.asarray(times) - t))) for t in targets]


@pytest.mark.parametrize("fps, start, seconds", [(25, 0.0, 10.0), (30, 3.0, 4.0), (24, 7.5, 10.0)])
def test_frames_are_the_uniformly_spaced_ones(tmp_path, fps, start, seconds):
    clip = write_clip(tmp_path / "c.mp4", SynthSpec(fps=fps, duration=12.0, width=320, height=180))
    spec = ClipSpec(frame_size=96, clip_seconds=seconds)
    out = decode_clip(clip.path, spec, start=start)
    window = min(seconds, 12.0 - start)
    expected = _nearest(clip.frame_times, frame_times(start, window, 8))
    assert [read_frame_index(f) for f in out.frames] == expected
    assert out.frames.shape == (8, 96, 96, 3) and out.frames.dtype == np.uint8
    assert out.waveform.shape == (spec.num_samples,) and out.waveform.dtype == np.float32
    assert out.quality.audio_seconds == pytest.approx(min(seconds, 12.0 - start), abs=0.03)


@pytest.mark.parametrize("rate", [8_000, 16_000, 22_050, 44_100, 48_000, 96_000])
def test_audio_is_16k_mono_of_exact_length(tmp_path, rate):
    clip = write_clip(
        tmp_path / "c.mkv",
        SynthSpec(
            container="mkv", audio_codec="flac", sample_rate=rate, duration=3.0, width=64, height=64, fps=10
        ),
    )
    out = decode_clip(clip.path, ClipSpec(frame_size=32, clip_seconds=4.0))
    assert out.waveform.shape == (64_000,)
    assert out.quality.audio_seconds == pytest.approx(3.0, abs=2e-3)
    assert not out.waveform[48_100:].any(), "padding after the real audio must be zeros"
    expected = tone_waveform(48_000, 16_000, 1)[0]  # the same 440 Hz tone, sampled at 16 kHz
    got = out.waveform[:48_000]
    lag = 64  # compare away from the edges where the resampler filter ramps
    corr = np.corrcoef(got[lag:-lag], expected[lag:-lag])[0, 1]
    assert corr > 0.999, f"resampled tone differs (corr {corr:.5f})"
    assert (out.quality.sample_rate, out.quality.channels) == (rate, 1)


def test_multichannel_is_downmixed(tmp_path):
    clip = write_clip(
        tmp_path / "c.mkv",
        SynthSpec(
            container="mkv",
            audio_codec="flac",
            sample_rate=48_000,
            channels=6,
            duration=2.0,
            width=64,
            height=64,
            fps=10,
        ),
    )
    out = decode_clip(clip.path, ClipSpec(frame_size=32, clip_seconds=2.0))
    spectrum = np.abs(np.fft.rfft(out.waveform))  # 2 s: bin = 0.5 Hz
    peaks = {round(f * 2) for f in (440, 880, 1320)}
    assert all(spectrum[p] > 0.05 * spectrum.max() for p in peaks), "front channels must reach the mix"
    assert out.quality.channels == 6


def test_no_audio_track_is_zeros_and_a_flag(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", SynthSpec(audio_codec=None, duration=2.0, width=64, height=64))
    out = decode_clip(clip.path, SPEC)
    assert not out.quality.has_audio and out.quality.silent
    assert out.waveform.shape == (160_000,) and not out.waveform.any()


def test_short_clip_repeats_nearest_frames_and_pads_audio(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", SynthSpec(duration=2.0, fps=2, width=96, height=96))
    out = decode_clip(clip.path, SPEC)
    indices = [read_frame_index(f) for f in out.frames]
    assert indices == _nearest(clip.frame_times, frame_times(0.0, 2.0, 8))
    assert len(set(indices)) == 4 and indices == sorted(indices)
    assert out.quality.audio_seconds == pytest.approx(2.0, abs=0.05)
    assert not out.waveform[40_000:].any()


def test_variable_frame_rate_uses_real_timestamps(tmp_path):
    times = np.concatenate([np.arange(0, 5, 1 / 30), 5 + np.arange(0, 5, 1 / 4)])
    frames = np.stack(
        [f for f in __import__("avfusion.synth", fromlist=["x"]).barcode_frames(len(times), 120, 160)]
    )
    clip = write_clip(
        tmp_path / "vfr.mp4",
        SynthSpec(width=160, height=120, duration=10.0),
        frames=frames,
        frame_times=times,
    )
    out = decode_clip(clip.path, SPEC)
    assert [read_frame_index(f) for f in out.frames] == _nearest(times, frame_times(0.0, 10.0, 8))


@pytest.mark.slow
@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
def test_rotation_matches_ffmpeg_autorotate(tmp_path, rotation):
    picture = np.zeros((1, 120, 160, 3), np.uint8)
    picture[:, :60] = (255, 0, 0)
    picture[:, 60:] = (0, 0, 255)
    picture[:, :, :20] = (0, 255, 0)
    clip = write_clip(
        tmp_path / "r.mp4",
        SynthSpec(width=160, height=120, fps=2, duration=1.0, audio_codec=None, rotation=rotation),
        frames=np.repeat(picture, 2, 0),
    )
    raw = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-i",
            str(clip.path),
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    h, w = (120, 160) if rotation in (0, 180) else (160, 120)
    ref = np.frombuffer(raw, np.uint8).reshape(h, w, 3)
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    ref = ref[y0 : y0 + side, x0 : x0 + side][::2, ::2]  # 120 → 60
    out = decode_clip(clip.path, ClipSpec(frame_size=60, num_frames=1, clip_seconds=1.0))
    assert out.quality.rotation == rotation
    assert np.abs(ref.astype(int) - out.frames[0].astype(int)).mean() < 3


def test_odd_sizes_decode(tmp_path):
    clip = write_clip(
        tmp_path / "odd.mkv",
        SynthSpec(container="mkv", width=161, height=97, duration=1.0, pix_fmt="yuv444p"),
    )
    out = decode_clip(clip.path, SPEC)
    assert out.frames.shape == (8, 96, 96, 3)
    assert (out.quality.width, out.quality.height) == (161, 97)


def test_quality_signals_flag_silence_and_frozen_video(tmp_path):
    still = np.repeat(np.full((1, 96, 96, 3), 120, np.uint8), 20, 0)
    silence = np.zeros((1, 32_000), np.float32)
    clip = write_clip(
        tmp_path / "q.mp4",
        SynthSpec(width=96, height=96, fps=10, duration=2.0, sample_rate=16_000),
        frames=still,
        waveform=silence,
    )
    q = decode_clip(clip.path, SPEC).quality
    assert q.silent and q.frozen and q.audio_rms < 1e-4
    live = decode_clip(write_clip(tmp_path / "l.mp4", SynthSpec(duration=2.0)).path, SPEC).quality
    assert not live.silent and not live.frozen
    assert (live.fps, live.width, live.height, live.video_codec, live.audio_codec) == (
        25.0,
        320,
        240,
        "h264",
        "aac",
    )
    assert live.duration == pytest.approx(2.0, abs=0.05)


def test_limits_reject_pathological_inputs(tmp_path):
    clip = write_clip(tmp_path / "big.mp4", SynthSpec(width=640, height=360, duration=1.0))
    with pytest.raises(MediaError) as exc:
        decode_clip(clip.path, SPEC, limits=DecodeLimits(max_pixels=320 * 240))
    assert exc.value.kind == "too_large" and "640x360" in str(exc.value)
    with pytest.raises(MediaError) as exc:
        decode_clip(clip.path, SPEC, limits=DecodeLimits(max_duration=0.5))
    assert exc.value.kind == "too_large"
    with pytest.raises(MediaError) as exc:
        decode_clip(clip.path, SPEC, start=5.0)
    assert exc.value.kind == "empty_window"


def test_malformed_corpus_fails_with_the_right_kind(tmp_path):
    expected = make_malformed_corpus(tmp_path)
    got = {}
    for name in expected:
        with pytest.raises(MediaError) as exc:
            decode_clip(tmp_path / name, SPEC)
        got[name] = exc.value.kind
    assert got == expected


def test_skip_nonref_keeps_frames_within_one_of_target(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", SynthSpec(fps=30, duration=10.0, width=320, height=180))
    exact = _nearest(clip.frame_times, frame_times(0.0, 10.0, 8))
    out = decode_clip(clip.path, SPEC, limits=DecodeLimits(skip_nonref=True))
    got = [read_frame_index(f) for f in out.frames]
    assert all(abs(g - e) <= 1 for g, e in zip(got, exact, strict=False)), (got, exact)


def _salvage_limits():
    import dataclasses

    from avfusion.labelling.worker import LABEL_LIMITS

    return dataclasses.replace(LABEL_LIMITS, allow_undecodable_video=True, allow_animated_images=True)


def test_salvage_corpus_preprocess_kinds_and_label_coverage(tmp_path):
    """Each damaged/awkward file decodes to what survives (label's limits) and, with
    preprocess's strict limits, is either a sample or the expected classified failure."""
    from tests.corpus import make_salvage_corpus

    expected = make_salvage_corpus(tmp_path)
    spec = ClipSpec(frame_size=64)
    for name, want in expected.items():
        if want["label"] is None:
            continue
        try:
            decode_clip(tmp_path / name, spec)
            got = "ok"
        except MediaError as exc:
            got = exc.kind
        assert got == want["preprocess"], (name, got)
        q = decode_clip(tmp_path / name, spec, limits=_salvage_limits()).quality
        lo, hi = want["label"]["covered"]
        assert lo <= q.covered_seconds <= hi, (name, q.covered_seconds)
        assert q.partial == ("partial" in want["label"]["flags"]), (name, q)
        assert q.video_undecodable == ("video_undecodable" in want["label"]["flags"]), name
        assert q.has_video == ("audio_only" not in want["label"]["flags"]), name
        assert q.has_audio == ("video_only" not in want["label"]["flags"]), name


def test_overwritten_middle_keeps_frames_and_audio_at_their_times(tmp_path):
    """Frames after the damaged stretch are the ones nearest their targets (by barcode)
    and the audio after it is not pulled forward: the hole is silence."""
    from tests.corpus import make_salvage_corpus

    make_salvage_corpus(tmp_path)
    out = decode_clip(tmp_path / "middle_15pct_overwritten.mp4", SPEC)
    assert out.quality.corrupt_packets > 0 and out.quality.partial
    # The synthetic H.264 has one keyframe (x264's 250-frame GOP): every frame after the
    # hole lost its references, so only the clean frames before it are used (by barcode).
    indices = [read_frame_index(f) for f in out.frames]
    targets = frame_times(0.0, 10.0, 8) * 25
    clean = round(out.quality.video_seconds * 25)
    assert abs(indices[0] - targets[0]) <= 1 and indices == sorted(indices), indices
    assert indices[-1] in (clean - 1, clean) and 2.0 <= out.quality.video_seconds <= 6.0, (indices, clean)
    wave = out.waveform.reshape(-1, 1600)  # 0.1 s blocks
    silent = np.flatnonzero(np.abs(wave).max(axis=1) < 1e-3)
    assert len(silent) >= 5 and 30 <= silent.min() and silent.max() <= 70, silent  # the hole, mid-file
    assert np.abs(wave[90:99]).max() > 0.1, "audio after the hole must stay at the end"


def test_cut_file_yields_the_seconds_before_the_cut(tmp_path):
    from tests.corpus import make_salvage_corpus

    make_salvage_corpus(tmp_path)
    out = decode_clip(tmp_path / "cut_at_30pct.mp4", SPEC)
    q = out.quality
    assert q.partial and 1.0 <= q.covered_seconds < 6.0
    assert not out.waveform[int((q.audio_seconds + 0.05) * 16_000) :].any(), "nothing invented after the cut"
    last = read_frame_index(out.frames[-1])
    assert last <= round(q.video_seconds * 25), (last, q.video_seconds)


def test_too_little_content_is_an_error_not_a_sample(tmp_path):
    from tests.corpus import faststart_copy

    src = write_clip(tmp_path / "s.mp4", SynthSpec(duration=10.0, width=160, height=120)).path
    data = faststart_copy(src, tmp_path / "fs.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: int(len(data) * 0.12)])  # well under a second survives
    with pytest.raises(MediaError) as exc:
        decode_clip(tmp_path / "cut.mp4", SPEC)
    assert exc.value.kind in ("decode_error", "empty_window")
    q = decode_clip(tmp_path / "cut.mp4", SPEC, limits=DecodeLimits(min_content_seconds=0.1)).quality
    assert 0.1 <= q.covered_seconds < 1.0 and q.partial


def test_deadline_turns_a_slow_decode_into_decode_timeout(tmp_path):
    clip = write_clip(tmp_path / "c.mp4", SynthSpec(duration=10.0, width=320, height=240))
    with pytest.raises(MediaError) as exc:
        decode_clip(clip.path, SPEC, limits=DecodeLimits(deadline_seconds=0.02))
    assert exc.value.kind == "decode_timeout"
    assert decode_clip(clip.path, SPEC).quality.covered_seconds == pytest.approx(10.0, abs=0.05)
