"""The synthetic generator writes exactly what it is asked for (read back with PyAV)."""

from fractions import Fraction

import av
import numpy as np
import pytest

from avfusion.sources import read_vggsound_csv
from avfusion.synth import (
    DEFAULT_CLASSES,
    SynthSpec,
    make_class_conditional_set,
    read_frame_index,
    write_clip,
)

MATRIX = [
    # spec, demuxer name, video codec, audio codec, lossless audio
    (SynthSpec(), "mp4", "h264", "aac", False),
    (
        SynthSpec(
            container="webm",
            video_codec="libvpx-vp9",
            audio_codec="libopus",
            width=160,
            height=120,
            fps=30,
            duration=3.0,
            sample_rate=48_000,
            channels=2,
        ),
        "webm",
        "vp9",
        "opus",
        False,
    ),
    (
        SynthSpec(
            container="mkv",
            audio_codec="flac",
            width=176,
            height=144,
            fps=24,
            duration=2.0,
            sample_rate=96_000,
            channels=6,
        ),
        "matroska",
        "h264",
        "flac",
        True,
    ),
    (
        SynthSpec(
            container="mov",
            audio_codec="pcm_s16le",
            width=192,
            height=108,
            fps=30000 / 1001,
            duration=2.0,
            sample_rate=8_000,
            channels=1,
        ),
        "mov",
        "h264",
        "pcm_s16le",
        True,
    ),
    (
        SynthSpec(
            container="avi",
            video_codec="mpeg4",
            audio_codec="libmp3lame",
            width=128,
            height=96,
            fps=15,
            duration=1.0,
            sample_rate=44_100,
            channels=2,
        ),
        "avi",
        "mpeg4",
        "mp3",
        False,
    ),
    (SynthSpec(video_codec=None, duration=3.0, sample_rate=22_050), "mp4", None, "aac", False),
    (SynthSpec(audio_codec=None, width=640, height=360, fps=30, duration=1.0), "mp4", "h264", None, False),
]


def _decode(path):
    frames, audio = [], []
    with av.open(str(path)) as c:
        info = {"format": c.format.name, "duration": c.duration / av.time_base if c.duration else None}
        if c.streams.video:
            v = c.streams.video[0]
            info.update(
                vcodec=v.codec_context.codec.canonical_name,
                size=(v.codec_context.width, v.codec_context.height),
                rate=v.average_rate,
            )
        if c.streams.audio:
            a = c.streams.audio[0]
            info.update(
                acodec=a.codec_context.codec.canonical_name,
                sample_rate=a.codec_context.sample_rate,
                channels=a.codec_context.channels,
            )
            resampler = av.AudioResampler(
                format="fltp", layout=a.codec_context.layout, rate=a.codec_context.sample_rate
            )
        for frame in c.decode(*c.streams.video[:1], *c.streams.audio[:1]):
            if isinstance(frame, av.VideoFrame):
                frames.append(frame.to_ndarray(format="rgb24"))
            else:
                audio += [f.to_ndarray() for f in resampler.resample(frame)]
    return info, frames, (np.concatenate(audio, axis=1) if audio else None)


@pytest.mark.parametrize(
    "spec, fmt, vcodec, acodec, lossless", MATRIX, ids=[f"{m[0].container}-{m[2]}-{m[3]}" for m in MATRIX]
)
def test_clip_reads_back_exactly_as_requested(tmp_path, spec, fmt, vcodec, acodec, lossless):
    clip = write_clip(tmp_path / f"c.{spec.container}", spec)
    info, frames, audio = _decode(clip.path)
    assert fmt in info["format"].split(",")
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"
    # Containers may round the end to the next frame or audio packet.
    assert info["duration"] == pytest.approx(spec.duration, abs=0.05 + 1 / spec.fps)

    if vcodec is None:
        assert "vcodec" not in info and clip.frames is None
    else:
        assert info["vcodec"] == vcodec
        assert info["size"] == (spec.width, spec.height)
        assert info["rate"] == spec.fps_fraction
        assert len(frames) == spec.num_frames == len(clip.frames)
        assert [read_frame_index(f) for f in frames] == list(range(spec.num_frames))
        err = np.abs(np.stack(frames).astype(int) - clip.frames.astype(int)).mean()
        assert err < 8, f"decoded frames differ from encoded ones by {err:.1f} on average"

    if acodec is None:
        assert "acodec" not in info and clip.waveform is None
    else:
        assert info["acodec"] == acodec
        assert (info["sample_rate"], info["channels"]) == (spec.sample_rate, spec.channels)
        assert clip.waveform.shape == (spec.channels, spec.num_samples)
        if lossless:
            np.testing.assert_array_equal(audio, clip.waveform)
        else:
            # Lossy codecs add priming/padding; compare energy per channel, not samples.
            assert abs(audio.shape[1] - spec.num_samples) <= 2048
            n = min(audio.shape[1], spec.num_samples)
            rms_out, rms_in = (
                np.sqrt((audio[:, :n] ** 2).mean(1)),
                np.sqrt((clip.waveform[:, :n] ** 2).mean(1)),
            )
            np.testing.assert_allclose(rms_out, rms_in, rtol=0.1)


def test_fps_fraction_is_exact_for_ntsc():
    assert SynthSpec(fps=30000 / 1001).fps_fraction == Fraction(30000, 1001)


def test_class_conditional_set(tmp_path):
    spec = SynthSpec(width=48, height=48, duration=1.0, fps=8, sample_rate=16_000)
    samples = make_class_conditional_set(tmp_path, per_class=4, spec=spec, seed=3)
    assert len(samples) == 4 * len(DEFAULT_CLASSES)
    rows = read_vggsound_csv(tmp_path / "labels.csv")
    assert [r.key for r in rows] == [s.key for s in samples]
    assert {r.split for r in rows} == {"train", "test"}
    for cls in DEFAULT_CLASSES:  # stratified: every class in both splits
        assert {r.split for r in rows if r.label == cls.name} == {"train", "test"}
    assert {s.informative for s in samples} == {"audio", "video", "both"}
    assert all((tmp_path / s.path).exists() for s in samples)
    assert (tmp_path / "synth.jsonl").read_text().count("\n") == len(samples)


def _arrays(path):
    _, frames, audio = _decode(path)
    return np.stack(frames), audio


def test_class_conditional_set_is_deterministic_and_informative(tmp_path):
    spec = SynthSpec(
        width=48, height=48, duration=1.0, fps=8, sample_rate=16_000, audio_codec="flac", container="mkv"
    )
    a = make_class_conditional_set(tmp_path / "a", per_class=2, spec=spec, seed=7)
    b = make_class_conditional_set(tmp_path / "b", per_class=2, spec=spec, seed=7)
    fa, wa = _arrays(tmp_path / "a" / a[0].path)
    fb, wb = _arrays(tmp_path / "b" / b[0].path)
    np.testing.assert_array_equal(wa, wb)
    np.testing.assert_array_equal(fa, fb)

    # An audio-only class carries its tone: 220 Hz dominates the spectrum of "low hum".
    hum = next(s for s in a if s.label == "low hum")
    _, wave = _arrays(tmp_path / "a" / hum.path)
    spectrum = np.abs(np.fft.rfft(wave[0]))
    peak_hz = np.argmax(spectrum[20:]) + 20  # 1 s clip: bin = Hz
    assert 200 <= peak_hz <= 240
    # A video-only class carries its picture: the red square makes frames markedly red.
    red = next(s for s in a if s.label == "red square")
    frames, _ = _arrays(tmp_path / "a" / red.path)
    redness = (frames[..., 0].astype(int) - frames[..., 1]) > 120
    assert redness.mean() > 0.05
    frames_hum, _ = _arrays(tmp_path / "a" / hum.path)
    assert ((frames_hum[..., 0].astype(int) - frames_hum[..., 1]) > 120).mean() < 0.01
