"""Our Ray calls use the current API: running the label job (Ray Data: decode tasks, a
model actor pool) and preprocess (Ray tasks) triggers no Ray deprecation warning or
deprecation log line that our arguments cause. Ray 2.60 reports deprecated Ray Data
arguments both ways: ``concurrency=`` as a log line, ``ray_remote_args`` (e.g.
``scheduling_strategy=``) as a ``RayDeprecationWarning`` attributed to our call site."""

import logging
import warnings
from pathlib import Path

import pytest

from avfusion import checkpoint
from avfusion.model import FusionModel, ModelConfig
from avfusion.synth import SynthSpec, make_class_conditional_set

pytestmark = pytest.mark.slow
OUR_CODE = str(Path(__file__).resolve().parents[1])


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def _deprecations(caught, handler):
    ours = [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, (DeprecationWarning, FutureWarning))
        and w.filename.startswith(OUR_CODE)
        and "/tests/" not in w.filename
    ]
    logged = [
        r.getMessage()
        for r in handler.records
        if r.name.startswith("ray") and "deprecat" in r.getMessage().lower()
    ]
    return ours + logged


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A real (untrained) model checkpoint in the format train writes: enough for the
    label job's actors, without training."""
    cfg = ModelConfig(num_classes=2, embed_dim=16, audio_width=8, video_weights="none")
    path = str(tmp_path / "tiny.pt")
    checkpoint.save(
        {
            "model": FusionModel(cfg).state_dict(),
            "model_config": cfg.__dict__,
            "label_map": {"a": 0, "b": 1},
            "clip": {"sample_rate": 16000, "clip_seconds": 2.0, "num_frames": 8, "frame_size": 64},
        },
        path,
    )
    return path


def test_label_and_preprocess_use_no_deprecated_ray_api(tmp_path, tiny_checkpoint, ray_local):
    from jobs import label as label_job
    from jobs import preprocess

    clips = tmp_path / "clips"
    make_class_conditional_set(
        clips, per_class=1, spec=SynthSpec(width=64, height=64, duration=2.0, fps=8, sample_rate=16_000)
    )
    handler = _Records()
    logging.getLogger("ray").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert (
                label_job.main(
                    [str(clips), str(tmp_path / "labels"), "--checkpoint", tiny_checkpoint, "--actors", "1"]
                )
                == 0
            )
            assert (
                preprocess.main(
                    [
                        str(clips),
                        "--labels",
                        str(clips / "labels.csv"),
                        "--out",
                        str(tmp_path / "shards"),
                        "--frame-size",
                        "64",
                    ]
                )
                == 0
            )
    finally:
        logging.getLogger("ray").removeHandler(handler)
    assert _deprecations(caught, handler) == []
