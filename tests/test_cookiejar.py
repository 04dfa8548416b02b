"""The node's cookie jar: attempts at once keep each other's rotations; the jar is private."""

import os
import threading

import pytest

from avfusion import cookiejar, storage

SEED = (
    "# Netscape HTTP Cookie File\n"
    ".example.com\tTRUE\t/\tTRUE\t0\tA\ta0\n"
    "#HttpOnly_.example.com\tTRUE\t/\tTRUE\t0\tB\tb0\n"
    ".example.com\tTRUE\t/\tTRUE\t0\tC\tc0\n"
)


def _edit(path: str, **cookies: str | None) -> None:
    """Set (or, with None, remove) cookies in a jar file, as yt-dlp's save would."""
    lines = [ln for ln in open(path).read().splitlines() if ln and not ln.startswith("# ")]
    out = []
    for line in lines:
        name = line.split("\t")[5]
        if name in cookies:
            value = cookies.pop(name)
            if value is None:
                continue
            line = "\t".join(line.split("\t")[:6] + [value])
        out.append(line)
    out += [f".example.com\tTRUE\t/\tTRUE\t0\t{n}\t{v}" for n, v in cookies.items() if v is not None]
    with open(path, "w") as f:
        f.write(cookiejar.HEADER + "".join(f"{ln}\n" for ln in out))


def _values(source: str) -> dict[str, str]:
    text = storage.read_text(cookiejar.jar_path(source, SEED))
    return {k[2]: line.split("\t")[6] for k, line in cookiejar.parse(text).items()}


def test_overlapping_attempts_keep_each_others_changes(tmp_path):
    source = str(tmp_path / "cookies.txt")
    with cookiejar.attempt_copy(source, SEED) as one, cookiejar.attempt_copy(source, SEED) as two:
        assert one != two and open(one).read() == SEED
        _edit(one, A="a1", D="d1")  # one rotates A and gets a new cookie
        _edit(two, B="b2", C=None)  # two rotates the HttpOnly B and the host expires C
    assert _values(source) == {"A": "a1", "B": "b2", "D": "d1"}
    with cookiejar.attempt_copy(source, SEED) as three:  # the next attempt starts from all of it
        assert cookiejar.parse(open(three).read()) == cookiejar.parse(
            storage.read_text(cookiejar.jar_path(source, SEED))
        )
    assert sorted(cookiejar.values(source, SEED)) == ["a1", "b2", "d1"]


def test_a_failed_attempt_still_keeps_its_rotation_and_threads_lose_none(tmp_path):
    source = str(tmp_path / "cookies.txt")
    with pytest.raises(RuntimeError), cookiejar.attempt_copy(source, SEED) as copy:
        _edit(copy, A="a-failed")
        raise RuntimeError("the download failed after the host rotated A")
    assert _values(source)["A"] == "a-failed"

    def rotate(i: int) -> None:
        with cookiejar.attempt_copy(source, SEED) as copy:
            _edit(copy, **{f"T{i}": f"t{i}"})

    threads = [threading.Thread(target=rotate, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {f"T{i}" for i in range(16)} <= set(_values(source))


def test_the_jar_folder_is_private_and_one_made_by_someone_else_is_refused(tmp_path, monkeypatch):
    folder = os.path.dirname(cookiejar.jar_path("x", SEED))
    assert os.stat(folder).st_mode & 0o777 == 0o700 and os.stat(folder).st_uid == os.getuid()
    monkeypatch.setattr(storage.tempfile, "gettempdir", lambda: str(tmp_path))
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / f"avfusion-cookies-{os.getuid()}")
    with pytest.raises(OSError, match="not a private folder"):
        cookiejar.jar_path("x", SEED)
    os.unlink(tmp_path / f"avfusion-cookies-{os.getuid()}")
    os.mkdir(tmp_path / f"avfusion-cookies-{os.getuid()}", 0o755)
    os.chmod(tmp_path / f"avfusion-cookies-{os.getuid()}", 0o755)
    with pytest.raises(OSError, match="open to others"):
        cookiejar.jar_path("x", SEED)
