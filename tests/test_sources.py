import pytest

from avfusion.preprocess.plan import label_map_of
from avfusion.sources import ClipRow, SourceError, clip_key, read_vggsound_csv, tasks_from_vggsound


def test_reads_vggsound_quirks(tmp_path):
    csv = tmp_path / "vggsound.csv"
    csv.write_text(
        "---g-f_I2yQ,1,people marching,test\n"
        'glLQrEijrKg,300,"cattle, bovinae cowbell",train\n'
        "\n"
        "-_x_y,30,dog barking,train\n"
    )
    rows = read_vggsound_csv(csv)
    assert rows == [
        ClipRow("---g-f_I2yQ", 1, "people marching", "test"),
        ClipRow("glLQrEijrKg", 300, "cattle, bovinae cowbell", "train"),
        ClipRow("-_x_y", 30, "dog barking", "train"),
    ]
    assert rows[1].key == "glLQrEijrKg_000300"
    assert clip_key("---g-f_I2yQ", 1) == "---g-f_I2yQ_000001"
    assert label_map_of(tasks_from_vggsound(rows)) == {
        "cattle, bovinae cowbell": 0,
        "dog barking": 1,
        "people marching": 2,
    }


@pytest.mark.parametrize(
    "text, message",
    [
        ("abc,1,dog\n", "expected 4 fields"),
        ("abc,one,dog,train\n", "not a number"),
        ("abc,1,dog,holdout\n", "split"),
        ("abc,1,dog,train\nabc,1,cat,test\n", "duplicate clip abc_000001"),
        ("abc,-5,dog,train\n", "negative"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, text, message):
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    with pytest.raises(SourceError, match=message) as exc:
        read_vggsound_csv(csv)
    assert "bad.csv:" in str(exc.value)


def test_url_list_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from avfusion.sources import read_url_list

    csv = tmp_path / "urls.csv"
    csv.write_text(
        "id,url,start,end,label,split\n"
        "a,http://127.0.0.1/a.mp4,30,40,dog,train\n"
        ",http://127.0.0.1/b.mp4,,,,\n"
    )
    tasks = read_url_list(csv)
    assert (tasks[0].key, tasks[0].start, tasks[0].end, tasks[0].label, tasks[0].split) == (
        "a_000030",
        30.0,
        40.0,
        "dog",
        "train",
    )
    assert tasks[1].key.endswith("_000000") and len(tasks[1].key) == 16 + 7 and tasks[1].label is None
    assert all(t.is_remote for t in tasks)
    pq.write_table(pa.table({"url": ["s3://b/x.mp4"], "label": ["cat"]}), tmp_path / "urls.parquet")
    (task,) = read_url_list(tmp_path / "urls.parquet")
    assert task.label == "cat" and task.start == 0.0
    (tmp_path / "bad.csv").write_text("link\nhttp://x\n")
    with pytest.raises(SourceError, match="needs a 'url' column"):
        read_url_list(tmp_path / "bad.csv")
