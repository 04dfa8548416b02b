"""The evaluate job on tiny checkpoints: well-formed report, baselines, determinism."""

import json

import pytest
from PIL import Image

from avfusion.evaluation.conditions import Condition, conditions
from jobs import evaluate as evaluate_job
from jobs import train as train_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, synthetic_shards):
    root = tmp_path_factory.mktemp("ckpts")
    cfg = root / "t.yaml"
    cfg.write_text("train:\n  model:\n    embed_dim: 32\n    audio_width: 8\n  workers: 0\n  batch_size: 8\n")
    out = {}
    for modality in ("both", "audio", "video"):
        run = root / modality
        assert (
            train_job.main(
                [
                    str(synthetic_shards),
                    "--out",
                    str(run),
                    "--config",
                    str(cfg),
                    "--epochs",
                    "1",
                    "--steps-per-epoch",
                    "1",
                    "--modalities",
                    modality,
                ]
            )
            == 0
        )
        out[modality] = run / "last.pt"
    return out


def test_report_is_well_formed(tmp_path, checkpoints, synthetic_shards):
    out = tmp_path / "rob"
    conds = "normal,muted_audio,black_frames,gaussian_blur@1,gaussian_blur@5,muted_audio+fog@2"
    assert (
        evaluate_job.main(
            [
                str(checkpoints["both"]),
                "--shards",
                str(synthetic_shards),
                "--conditions",
                conds,
                "--audio-baseline",
                str(checkpoints["audio"]),
                "--video-baseline",
                str(checkpoints["video"]),
                "--out",
                str(out),
                "--workers",
                "0",
            ]
        )
        == 0
    )
    report = json.loads((out / "robustness.json").read_text())
    results = report["conditions"]
    assert list(results) == [
        "normal",
        "muted_audio",
        "black_frames",
        "gaussian_blur@1",
        "gaussian_blur@5",
        "muted_audio+fog@2",
    ]
    for _cond, by_model in results.items():
        assert set(by_model) == {"fused", "audio-only", "video-only"}
        fused = by_model["fused"]
        assert fused["n"] == 24
        assert fused["max_weight_sum_error"] < 1e-5, "each clip's w_audio + w_video is 1"
        assert 0 <= fused["agreement"] <= 1
        assert 0 <= fused["top1"] <= fused["top5"] <= 1
        assert "w_audio" not in by_model["audio-only"]
    # A corruption of one modality cannot change the other modality's baseline.
    assert results["black_frames"]["audio-only"] == results["normal"]["audio-only"]
    assert results["muted_audio"]["video-only"] == results["normal"]["video-only"]
    md = (out / "robustness.md").read_text()
    assert md.count("\n| ") == 1 + len(results) and "top-1 audio-only" in md
    for png in ("attention_by_condition.png", "accuracy_vs_severity.png", "attention_vs_severity.png"):
        with Image.open(out / png) as im:
            assert im.size[0] > 300 and im.size[1] > 200


def test_evaluation_is_deterministic(tmp_path, checkpoints, synthetic_shards):
    runs = []
    for name in ("a", "b"):
        assert (
            evaluate_job.main(
                [
                    str(checkpoints["both"]),
                    "--shards",
                    str(synthetic_shards),
                    "--conditions",
                    "video_gaussian_noise@4,drop_frames@2",
                    "--out",
                    str(tmp_path / name),
                    "--workers",
                    "2",
                    "--batch-size",
                    "5",
                ]
            )
            == 0
        )
        runs.append(json.loads((tmp_path / name / "robustness.json").read_text())["conditions"])
    assert runs[0] == runs[1]
    assert list(runs[0]) == ["normal", "video_gaussian_noise@4", "drop_frames@2"]


def test_bad_arguments_are_clear_errors(tmp_path, checkpoints, synthetic_shards, capsys):
    assert evaluate_job.main([str(checkpoints["audio"]), "--shards", str(synthetic_shards)]) == 2
    assert "fused" in capsys.readouterr().err
    assert (
        evaluate_job.main(
            [str(checkpoints["both"]), "--shards", str(synthetic_shards), "--conditions", "no_such_thing"]
        )
        == 2
    )
    assert "unknown corruption" in capsys.readouterr().err


def test_suites():
    default, full = conditions("default"), conditions("full")
    assert default[0].name == "normal" and "gaussian_blur@3" in [c.name for c in default]
    assert {f"fog@{s}" for s in range(1, 6)} <= {c.name for c in full}
    assert len(full) > len(default)
    assert Condition.parse("muted_audio+fog@2").corruptions == (("muted_audio", 3), ("fog", 2))


def test_tally_reports_both_weights_as_measured():
    """w_video is the mean of the model's own video weights, never 1 - w_audio: a model
    whose weights do not sum to one must show it."""
    import torch

    from avfusion.evaluation.run import ConditionTally
    from avfusion.model import FusionOutput

    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    tally = ConditionTally()
    tally.add(
        FusionOutput(logits, torch.tensor([[0.7, 0.3], [0.2, 0.5]]), logits, -logits),
        torch.tensor([0, 1]),
        fused=True,
    )
    s = tally.summary()
    assert s["w_audio"] == pytest.approx(0.45) and s["w_video"] == pytest.approx(0.4)
    assert s["max_weight_sum_error"] == pytest.approx(0.3)
    assert s["agreement"] == pytest.approx(
        0.5
    )  # clip 0: audio weighted and surer; clip 1: video weighted, audio surer
    # each branch's own head alone: the audio head is right on both clips, the video head on none
    assert s["audio_head_top1"] == 1.0 and s["video_head_top1"] == 0.0


def test_device_cpu_runs_the_shared_path(tmp_path, checkpoints, synthetic_shards):
    """``--device cpu`` and the default device run one code path: here (no GPU) the two
    reports are identical, and the device used is recorded in the report."""
    runs = []
    for name, extra in (("auto", []), ("cpu", ["--device", "cpu"])):
        assert (
            evaluate_job.main(
                [
                    str(checkpoints["both"]),
                    "--shards",
                    str(synthetic_shards),
                    "--conditions",
                    "muted_audio,fog@2",
                    "--out",
                    str(tmp_path / name),
                    "--workers",
                    "0",
                    "--audio-baseline",
                    str(checkpoints["audio"]),
                    *extra,
                ]
            )
            == 0
        )
        runs.append(json.loads((tmp_path / name / "robustness.json").read_text()))
    assert runs[1]["meta"]["device"] == "cpu"
    assert runs[0]["conditions"] == runs[1]["conditions"]
    assert runs[1]["conditions"]["normal"]["fused"]["n"] == 24


def test_device_cuda_without_a_gpu_is_a_clear_error(tmp_path, checkpoints, synthetic_shards, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: cuda is a valid device here")
    assert (
        evaluate_job.main(
            [
                str(checkpoints["both"]),
                "--shards",
                str(synthetic_shards),
                "--device",
                "cuda",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert "no CUDA device" in capsys.readouterr().err


def test_folder_of_labelled_videos(tmp_path, checkpoints, synthetic_shards):
    """``--folder`` with a VGGSound-format CSV: every labelled clip decoded and scored."""
    clips = synthetic_shards.parent / "clips"
    labelled = [line for line in (clips / "labels.csv").read_text().splitlines() if line.strip()]
    assert (
        evaluate_job.main(
            [
                str(checkpoints["both"]),
                "--folder",
                str(clips),
                "--labels",
                str(clips / "labels.csv"),
                "--conditions",
                "normal",
                "--out",
                str(tmp_path / "rob"),
                "--workers",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "rob" / "robustness.json").read_text())["conditions"]
    assert results["normal"]["fused"]["n"] == len(labelled) == len(list(clips.glob("*.mp4")))
