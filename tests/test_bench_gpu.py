"""``avfusion bench gpu`` end to end on the CPU (what CI can run): every step in its own
process under its cap, the CUDA-only measurements saying so, results files written by
the bench, and a step that overruns its cap killed with its stack in its log."""

from __future__ import annotations

import json

import pytest

from jobs.bench import gpu

pytestmark = pytest.mark.slow


def test_bench_gpu_runs_end_to_end_on_the_cpu(tmp_path, synthetic_shards, capsys):
    out = tmp_path / "gpu"
    argv = ["--device", "cpu", "--shards", str(synthetic_shards), "--out", str(out), "--steps", "1"]
    argv += ["--batch-size", "2", "--skip", "loader,label,tests"]
    assert gpu.main(argv) == 0
    summary = json.loads((out / "gpu.json").read_text())["results"]
    assert set(summary) == {"env", "decode", "train", "syncs", "gabor", "ddp"}
    assert all(s["rc"] == 0 and not s["timed_out"] for s in summary.values()), summary
    train = summary["train"]
    assert (
        train["losses_finite"]
        and train["model_only_clips_per_s"] > 0
        and train["from_shards_clips_per_s"] > 0
    )
    assert train["ratio"] == pytest.approx(train["from_shards_clips_per_s"] / train["model_only_clips_per_s"])
    assert summary["syncs"]["skipped"].startswith("needs CUDA") and summary["decode"]["race"].startswith(
        "skipped"
    )
    assert summary["gabor"]["logE_maxabs_ours"] < 1e-2 and summary["ddp"]["all_reduce_ok"]
    assert summary["env"]["jpeg_backend"] in ("torchcodec", "torchvision")
    md = (out / "gpu.md").read_text()
    assert "Written by `avfusion bench gpu --device cpu" in md and "SKIP loader: asked" in md
    assert (out / "gpu.png").stat().st_size > 1000 and (out / "train.log").exists()


def test_a_step_over_its_cap_is_killed_and_its_stack_kept(tmp_path, synthetic_shards):
    """500 timed steps cannot finish in 3 s: the step is killed mid-run."""
    out = tmp_path / "gpu"
    argv = ["--device", "cpu", "--shards", str(synthetic_shards), "--out", str(out), "--steps", "500"]
    argv += [
        "--batch-size",
        "2",
        "--skip",
        "env,decode,syncs,gabor,ddp,loader,label,tests",
        "--caps",
        "train=3",
    ]
    assert gpu.main(argv) == 0
    train = json.loads((out / "gpu.json").read_text())["results"]["train"]
    assert train["timed_out"] and train["seconds"] < 20, train
    log = (out / "train.log").read_text()
    assert "most recent call first" in log and "File " in log  # faulthandler: where it was stopped


def test_unknown_steps_are_one_line(tmp_path, capsys):
    assert gpu.main(["--out", str(tmp_path), "--skip", "nope"]) == 2
    assert "no step named nope" in capsys.readouterr().err
