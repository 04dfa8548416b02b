import csv
import json
import subprocess

import pyarrow.parquet as pq
import pytest

from avfusion import sample_data


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_demo_end_to_end_reduced(tmp_path, cli_env):
    """The whole demo on all 380 clips, with one epoch per model and the six conditions
    of its table (the default suite would add ~20 conditions of evaluation)."""
    out = tmp_path / "demo"
    conditions = (
        "normal,muted_audio,audio_gaussian_noise@3,black_frames,gaussian_blur@3,video_gaussian_noise@3"
    )
    proc = subprocess.run(
        [
            "avfusion",
            "demo",
            "--out",
            str(out),
            "--epochs",
            "1",
            "--num-cpus",
            "2",
            "--conditions",
            conditions,
        ],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=1400,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((out / "shards" / "manifest.json").read_text())
    labels_csv = sample_data.labels_csv().read_text().splitlines()
    n_clips, n_test = len(labels_csv), sum(line.endswith(",test") for line in labels_csv)
    assert manifest["num_samples"] == n_clips >= 300 and len(manifest["label_map"]) >= 8
    for modality in ("both", "audio", "video"):
        assert (out / "runs" / modality / "last.pt").exists()
    report = json.loads((out / "robustness" / "robustness.json").read_text())["conditions"]
    assert set(report["normal"]) == {"fused", "audio-only", "video-only"}
    assert report["normal"]["fused"]["n"] == n_test
    labels = pq.read_table(sorted((out / "labels").glob("part-*.parquet")))
    assert labels.num_rows == n_clips and labels.column("error_class").null_count == n_clips
    for text in (
        "=== summary ===",
        "| muted audio |",
        "| black frames |",
        "avfusion bench robustness",
        f"its {n_test} held-out clips",
        "attention_by_condition.png",
    ):
        assert text in proc.stdout
    # the clean row shows the margin over the better unimodal model, from the report's figures
    clean = {m: report["normal"][m]["top1"] for m in ("fused", "audio-only", "video-only")}
    margin = clean["fused"] - max(clean["audio-only"], clean["video-only"])
    assert (
        f"| clean input | {clean['fused']:.3f} | {clean['audio-only']:.3f} | {clean['video-only']:.3f} | "
        f"{margin:+.3f} |" in proc.stdout
    )
    heads = report["normal"]["fused"]
    assert f"audio {heads['audio_head_top1']:.3f}, video {heads['video_head_top1']:.3f}" in proc.stdout
    # the printed accuracy is the Parquet rows' own, over every held-out clip
    truth = {clip: label for clip, _, label, split in csv.reader(labels_csv) if split == "test"}
    rows = [
        r for r in labels.to_pylist() if r["key"].rsplit("_", 1)[0] in truth
    ]  # key: avf_dog_01_000000.mp4
    right = sum(r["predicted_label"] == truth[r["key"].rsplit("_", 1)[0]] for r in rows)
    assert (
        len(rows) == n_test and f"Held-out accuracy of the Parquet labels: {right}/{n_test} =" in proc.stdout
    )
    shown = [line for line in proc.stdout.splitlines() if line.startswith(("  ok ", "  -- "))]
    assert len(shown) == 8 and all(" true " in line and " predicted " in line for line in shown)
