import json
import subprocess

import pytest


@pytest.mark.slow
def test_demo_runs_on_embedded_ray(tmp_path, cli_env):
    out = tmp_path / "demo"
    proc = subprocess.run(["avfusion", "demo", "--out", str(out), "--num-cpus", "2"], env=cli_env,
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Started a local Ray instance" in proc.stderr
    results = json.loads((out / "probe.json").read_text())
    assert len(results) == 36 and all(r["ok"] for r in results)
    assert "railroad car, train wagon" in proc.stdout
