"""Benchmark results files: one writer, through storage, each headed by the date, the
machine and the exact command (the fast tier: no process, no server)."""

import json
import platform
import uuid

import pytest
import torch

from avfusion import storage
from jobs.bench import common


@pytest.fixture
def tables(monkeypatch):
    """A clean record of printed tables, as in a bench's own process."""
    monkeypatch.setattr(common, "_TABLES", [])


def test_results_files_carry_date_machine_and_command(tables, capsys):
    # memory:// is not a local path: the files can only get there through storage
    where = f"memory://results-{uuid.uuid4().hex}"
    common.print_table(
        "Bundled real set: goals", [("muted | w_audio", 0.0834, True)], ("goal", "measured", "met")
    )
    plotted = []

    def plot(local: str) -> None:
        plotted.append(local)
        with open(local, "wb") as f:
            f.write(b"\x89PNG fake")

    written = common.write_results(
        "robustness",
        ["--folds", "5", "--out", "/tmp/runs dir"],
        data={"real": {"top1": 0.7}},
        plot=plot,
        results_dir=where,
    )
    assert written == [f"{where}/robustness.md", f"{where}/robustness.json", f"{where}/robustness.png"]
    assert plotted and storage.read_bytes(written[2]) == b"\x89PNG fake"

    record = storage.read_json(written[1])
    assert record["results"] == {"real": {"top1": 0.7}}
    header = record["header"]
    assert header["bench"] == "robustness"
    assert header["command"] == "avfusion bench robustness --folds 5 --out '/tmp/runs dir'"
    assert header["date"].endswith("+00:00") and header["date"][:4].isdigit()
    m = header["machine"]
    assert m["cpu"] and m["cores"] >= 1 and 1 <= m["usable_cores"] <= m["cores"]
    assert m["torch"] == torch.__version__ and m["python"] == platform.python_version()
    assert m["gpus"] == (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )

    md = storage.read_text(written[0])
    assert md.startswith("# avfusion bench robustness\n")
    for line in (
        f"| date (UTC) | {header['date']} |",
        f"| command | `{header['command']}` |",
        f"| torch / Python | {m['torch']} / {m['python']} |",
        "## Bundled real set: goals",
        "| goal | measured | met |",
        "| muted \\| w_audio | 0.083 | True |",
    ):
        assert line in md
    assert f"{m['cores']} cores" in md and ("| GPU | none |" in md) == (not m["gpus"])
    assert json.dumps(header)  # the header is plain JSON


def test_without_data_or_plot_only_the_markdown_is_written(tables, tmp_path):
    written = common.write_results("scale", None, results_dir=str(tmp_path / "results"))
    assert written == [str(tmp_path / "results" / "scale.md")]
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["scale.md"]
    assert "avfusion bench scale" in storage.read_text(written[0])
