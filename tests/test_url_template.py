"""``--url-template`` (YAML ``download: url_template:``): only the literal ``{id}`` is
replaced, and every URL it gives passes the same scheme check as a URL list's."""

import pytest

from avfusion.sources import ClipRow, SourceError, check_url_template, tasks_from_vggsound

ROWS = [ClipRow("abc", 5, "dog", "train")]
WHERE = "url_template (--url-template)"
BRACES = (
    "it must contain {id}, which is replaced by each clip's id, and no other { or } "
    "(e.g. https://www.youtube.com/watch?v={id})"
)


def refusal(template: str, problem: str) -> str:
    return f"{WHERE} {template!r} {problem}; {BRACES}"


def test_default_template_expands_the_id():
    (task,) = tasks_from_vggsound(ROWS)
    assert task.source == "https://www.youtube.com/watch?v=abc"
    assert (task.key, task.start, task.label, task.split) == ("abc_000005", 5.0, "dog", "train")


def test_id_is_substituted_as_plain_text():
    rows = [ClipRow("{start}", 1, "dog", "train"), ClipRow("x{id}", 2, "cat", "test")]
    sources = [t.source for t in tasks_from_vggsound(rows, "https://m.example/{id}/{id}.mp4")]
    assert sources == ["https://m.example/{start}/{start}.mp4", "https://m.example/x{id}/x{id}.mp4"]


@pytest.mark.parametrize(
    "template, problem",
    [
        ("https://h/{nope}", "has no {id}"),
        ("https://h/{0}", "has no {id}"),
        ("https://h/{id", "has no {id}"),
        ("https://h/static.mp4", "has no {id}"),
        ("https://h/{id}/{start}", "has a brace other than in {id}"),
        ("https://h/{id:>999999999}", "has no {id}"),
        ("https://h/{id.__class__.__mro__}", "has no {id}"),
        ("https://h/{{id}}", "has a brace other than in {id}"),
        ("https://h/{id}}", "has a brace other than in {id}"),
        ("https://h/{id}/{id.__class__}", "has a brace other than in {id}"),
    ],
)
def test_hostile_templates_are_refused_in_one_line(template, problem):
    with pytest.raises(SourceError) as err:
        tasks_from_vggsound(ROWS, template)
    assert str(err.value) == refusal(template, problem)
    assert "\n" not in str(err.value)
    with pytest.raises(SourceError):
        tasks_from_vggsound([], template)  # refused before any row, even with none


def test_template_secrets_stay_out_of_the_refusal():
    with pytest.raises(SourceError) as err:
        check_url_template("https://u:hunter2@h/{nope}?sig=tok3n")
    assert "hunter2" not in str(err.value) and "tok3n" not in str(err.value)


def test_local_path_template_needs_allow_local_paths():
    template = "/tmp/x/{id}"
    with pytest.raises(SourceError) as err:
        tasks_from_vggsound(ROWS, template)
    assert str(err.value) == (
        f"{WHERE} '/tmp/x/{{id}}' for clip abc_000005: '/tmp/x/abc' is a local path; a url_template "
        "names http(s):// or object-store URLs (s3://, s3a://, gs://, gcs://, az://, abfs://, abfss://, "
        "memory://); pass --allow-local-paths to read local files from the worker's disk"
    )
    (task,) = tasks_from_vggsound(ROWS, template, allow_local_paths=True)
    assert task.source == "/tmp/x/abc"


def test_file_url_template_needs_allow_local_paths_and_becomes_a_path():
    template = "file:///tmp/x/{id}.mp4"
    with pytest.raises(SourceError, match=r"'file:///tmp/x/abc.mp4' is a file:// URL; a url_template names"):
        tasks_from_vggsound(ROWS, template)
    (task,) = tasks_from_vggsound(ROWS, template, allow_local_paths=True)
    assert task.source == "/tmp/x/abc.mp4"  # read as a file, not a wrong missing_file


@pytest.mark.parametrize("template", ["ftp://h/{id}", "javascript:{id}", "{id}"])
def test_other_schemes_are_refused_even_with_local_paths(template):
    rows = [ClipRow("ftp://evil/x", 1, "dog", "train")] if template == "{id}" else ROWS
    with pytest.raises(SourceError) as err:
        tasks_from_vggsound(rows, template, allow_local_paths=True)
    message = str(err.value)
    assert "which a url_template does not take; allowed: http://, https://, s3://" in message
    assert "\n" not in message


def test_object_store_template_is_accepted():
    (task,) = tasks_from_vggsound(ROWS, "s3://bucket/clips/{id}.mp4")
    assert task.source == "s3://bucket/clips/abc.mp4" and task.in_storage


def test_unparsable_url_in_a_refusal_is_one_line():
    with pytest.raises(SourceError) as err:
        tasks_from_vggsound(ROWS, "ftp://[{id}")
    assert "\n" not in str(err.value) and "does not take" in str(err.value)


@pytest.mark.parametrize(
    "template, expected",
    [
        (
            "https://h/{id.__class__.__mro__}",
            refusal("https://h/{id.__class__.__mro__}", "has no {id}"),
        ),
        ("/tmp/x/{id}", "'/tmp/x/abc' is a local path"),
    ],
)
def test_preprocess_refuses_a_bad_template_in_one_line(tmp_path, capsys, template, expected):
    from jobs import preprocess

    csv = tmp_path / "vggsound.csv"
    csv.write_text("abc,5,dog,train\n")
    argv = [str(csv), "--out", str(tmp_path / "out"), "--url-template", template, "--executor", "local"]
    assert preprocess.main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and expected in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.tar"))
