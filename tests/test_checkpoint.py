"""The checkpoint format: a saved model predicts the same after loading; a file without
this format's marker and version is refused with one line, by the library and the jobs."""

import pytest
import torch

from avfusion import checkpoint
from avfusion.checkpoint import CheckpointError, model_from_checkpoint
from avfusion.model import FusionModel, ModelConfig

CLIP = {"sample_rate": 16000, "clip_seconds": 0.5, "num_frames": 2, "frame_size": 32}


def _state(model: FusionModel) -> dict:
    return {
        "model": model.state_dict(),
        "model_config": model.cfg.__dict__,
        "label_map": {"a": 0, "b": 1, "c": 2},
        "clip": CLIP,
    }


def _inputs():
    gen = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, 8_000, generator=gen),
        torch.randint(0, 256, (2, 2, 32, 32, 3), dtype=torch.uint8, generator=gen),
    )


def test_a_saved_model_predicts_the_same_after_loading(tmp_path):
    model = FusionModel(ModelConfig(num_classes=3, embed_dim=8, audio_width=4, audio_filters=8)).eval()
    path = str(tmp_path / "last.pt")
    checkpoint.save(_state(model), path)
    ckpt = checkpoint.load(path)
    assert (ckpt["format"], ckpt["version"]) == (checkpoint.FORMAT, checkpoint.VERSION)
    assert ckpt["label_map"] == {"a": 0, "b": 1, "c": 2} and ckpt["clip"] == CLIP
    loaded, _ = model_from_checkpoint(path)
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(*_inputs()).logits, model(*_inputs()).logits, rtol=0, atol=0)


def test_a_checkpoint_without_a_model_is_not_written(tmp_path):
    with pytest.raises(ValueError, match=r"missing \['label_map', 'clip'\]"):
        checkpoint.save({"model": {}, "model_config": {}}, str(tmp_path / "x.pt"))
    assert not (tmp_path / "x.pt").exists()


def test_an_unversioned_or_other_version_file_is_refused_in_one_line(tmp_path):
    model = FusionModel(ModelConfig(num_classes=3, embed_dim=8, audio_width=4, audio_filters=8))
    bare = tmp_path / "bare.pt"
    torch.save({**_state(model), "version": "0.1.0"}, bare)  # no format marker; a package version string
    with pytest.raises(CheckpointError) as refused:
        checkpoint.load(str(bare))
    message = str(refused.value)
    assert "\n" not in message and str(bare) in message and "format marker" in message
    assert f"version {checkpoint.VERSION}" in message and "retrain with avfusion" in message
    with pytest.raises(CheckpointError):
        model_from_checkpoint(bare)

    future = tmp_path / "future.pt"
    torch.save({**_state(model), "format": checkpoint.FORMAT, "version": checkpoint.VERSION + 1}, future)
    with pytest.raises(
        CheckpointError,
        match=f"of version {checkpoint.VERSION + 1},.* reads version {checkpoint.VERSION}; retrain",
    ):
        checkpoint.load(str(future))

    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(1), tensor)
    with pytest.raises(CheckpointError, match="is not an avfusion checkpoint"):
        checkpoint.load(str(tensor))


def test_weights_load_strictly(tmp_path):
    """A checkpoint whose weights do not match its model config, an extra module or a
    missing one, is an error, never a partial load."""
    model = FusionModel(
        ModelConfig(num_classes=3, modalities="audio", embed_dim=8, audio_width=4, audio_filters=8)
    )
    extra = tmp_path / "extra.pt"
    state = _state(model)
    checkpoint.save(
        {**state, "model": {**state["model"], "video_head.weight": torch.zeros(3, 8)}}, str(extra)
    )
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model_from_checkpoint(extra)
    missing = tmp_path / "missing.pt"
    checkpoint.save(
        {**state, "model": {k: v for k, v in state["model"].items() if k != "classifier.weight"}},
        str(missing),
    )
    with pytest.raises(RuntimeError, match="Missing key"):
        model_from_checkpoint(missing)


@pytest.fixture
def unversioned(tmp_path):
    model = FusionModel(ModelConfig(num_classes=3, embed_dim=8, audio_width=4, audio_filters=8))
    path = tmp_path / "old.pt"
    torch.save(_state(model), path)
    return str(path)


def _one_line_error(capsys, job: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"avfusion {job}: ") and "retrain with avfusion" in err, err
    return err


def test_jobs_refuse_an_unversioned_checkpoint_in_one_line(tmp_path, unversioned, capsys):
    from jobs import evaluate, label, predict

    shards, report = str(tmp_path / "shards"), str(tmp_path / "report")
    assert evaluate.main([unversioned, "--shards", shards, "--out", report]) == 2
    _one_line_error(capsys, "evaluate")
    (tmp_path / "videos").mkdir()
    assert label.main([str(tmp_path / "videos"), str(tmp_path / "labels"), "--checkpoint", unversioned]) == 2
    _one_line_error(capsys, "label")
    assert not (tmp_path / "labels").exists(), "nothing is written before the checkpoint is read"
    assert predict.main([str(tmp_path / "clip.mp4"), "--checkpoint", unversioned]) == 2
    _one_line_error(capsys, "predict")
