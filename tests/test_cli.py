import subprocess

import pytest

from jobs.cli import JOBS, main


@pytest.mark.slow
def test_help_lists_every_job(cli_env):
    out = subprocess.run(
        ["avfusion", "--help"], env=cli_env, capture_output=True, text=True, check=True
    ).stdout
    for job in ["preprocess", "train", "evaluate", "label", "predict", "bench", "demo", "synth"]:
        assert f"  {job}  " in out or f"  {job} " in out, job
    assert set(JOBS) >= {"preprocess", "train", "evaluate", "label", "predict", "bench", "demo"}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_each_job_has_help(job, capsys):
    with pytest.raises(SystemExit) as exc:
        main([job, "--help"])
    assert exc.value.code == 0
    assert f"avfusion {job}" in capsys.readouterr().out


def test_unknown_job_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["nope"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
