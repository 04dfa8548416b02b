import pytest

from avfusion.sources import ClipRow, SourceError, clip_key, label_map, read_vggsound_csv


def test_reads_vggsound_quirks(tmp_path):
    csv = tmp_path / "vggsound.csv"
    csv.write_text(
        '---g-f_I2yQ,1,people marching,test\n'
        'glLQrEijrKg,300,"cattle, bovinae cowbell",train\n'
        '\n'
        '-_x_y,30,dog barking,train\n'
    )
    rows = read_vggsound_csv(csv)
    assert rows == [
        ClipRow("---g-f_I2yQ", 1, "people marching", "test"),
        ClipRow("glLQrEijrKg", 300, "cattle, bovinae cowbell", "train"),
        ClipRow("-_x_y", 30, "dog barking", "train"),
    ]
    assert rows[1].key == "glLQrEijrKg_000300"
    assert clip_key("---g-f_I2yQ", 1) == "---g-f_I2yQ_000001"
    assert label_map(rows) == {"cattle, bovinae cowbell": 0, "dog barking": 1, "people marching": 2}


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
