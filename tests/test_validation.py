"""Every bad flag and config value is one line naming the key, the value and what is
allowed, exit status 2, no traceback, before any work starts (issue 27).

Jobs run in-process (``main(argv)``) so the table stays in the fast tier; two rows go
through the installed ``avfusion`` script in a subprocess (slow)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from jobs import demo, evaluate, label, preprocess, train

GOVERNOR_KEYS = (
    "['cooldown_max', 'cooldown_start', 'forbidden_streak', 'global_per_hour', 'global_spacing', "
    "'jitter', 'max_blocked', 'min_spacing', 'per_node_per_hour', 'proxy_rest', 'suspect_streak', 'window']"
)
SECTIONS = "['clip', 'download', 'limits', 'preprocess', 'governor', 'train']"


def _run(main, argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of a job's ``main``; argparse's own refusals exit."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err


def _assert_one_line(code: int, err: str, expected: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.rstrip("\n") == expected


@pytest.fixture
def clips_csv(tmp_path: Path) -> Path:
    """A well-formed VGGSound CSV: a row the config refusals never get to download."""
    path = tmp_path / "clips.csv"
    path.write_text("abc,1,dog,train\n")
    return path


# --- preprocess ------------------------------------------------------------------------

# (flags, YAML config or None, the message after "avfusion preprocess: ")
PREPROCESS_BAD = [
    (
        ["--shard-size", "-1"],
        None,
        "preprocess.shard_size: -1 is out of range; allowed: an integer 1..100000",
    ),
    (["--shard-size", "0"], None, "preprocess.shard_size: 0 is out of range; allowed: an integer 1..100000"),
    (["--limit", "-1"], None, "preprocess.limit: -1 is out of range; allowed: an integer >= 0"),
    (["--max-attempts", "0"], None, "download.max_attempts: 0 is out of range; allowed: an integer 1..100"),
    (
        ["--downloads-per-hour", "0"],
        None,
        "governor.per_node_per_hour: 0.0 is out of range; allowed: a number > 0 and <= 10000000",
    ),
    (
        ["--downloads-per-hour", "nan"],
        None,
        "governor.per_node_per_hour: nan is out of range; allowed: a number > 0 and <= 10000000",
    ),
    (["--min-spacing", "-1"], None, "governor.min_spacing: -1.0 is out of range; allowed: a number 0..86400"),
    (
        ["--max-blocked", "0"],
        None,
        "governor.max_blocked: 0.0 is out of range; allowed: a number > 0 and <= 2592000",
    ),
    (["--sleep", "inf"], None, "download.sleep_seconds: inf is out of range; allowed: a number 0..3600"),
    (["--threads", "0"], None, "preprocess.threads_per_task: 0 is out of range; allowed: an integer 1..1024"),
    (
        ["--frame-size", "1000000"],
        None,
        "clip.frame_size: 1000000 is out of range; allowed: an integer 16..4096",
    ),
    (["--concurrency", "0"], None, "executor.concurrency: 0 is out of range; allowed: an integer 1..100000"),
    (["--num-cpus", "-2"], None, "executor.num_cpus: -2 is out of range; allowed: an integer 1..100000"),
    (
        ["--task-retries", "-1"],
        None,
        "preprocess.task_retries: -1 is out of range; allowed: an integer 0..100",
    ),
    (["--yt-dlp-option", "noequals"], None, "--yt-dlp-option: 'noequals' is not KEY=JSON (e.g. retries=3)"),
    (["--yt-dlp-option", "=1"], None, "--yt-dlp-option: '=1' is not KEY=JSON (e.g. retries=3)"),
    (
        ["--shard-size", "abc"],
        None,
        "argument --shard-size: invalid int value: 'abc' (see avfusion preprocess --help)",
    ),
    (
        ["--shard-size", "1e400"],
        None,
        "argument --shard-size: invalid int value: '1e400' (see avfusion preprocess --help)",
    ),
    (
        [],
        "preprocess: {shard_size: abc}",
        "preprocess.shard_size: 'abc' is not an integer; allowed: an integer 1..100000",
    ),
    (
        [],
        "preprocess: {shard_size: 0}",
        "preprocess.shard_size: 0 is out of range; allowed: an integer 1..100000",
    ),
    (
        [],
        "preprocess: {shard_size: 1.0e+400}",
        "preprocess.shard_size: inf is not an integer; allowed: an integer 1..100000",
    ),
    (
        [],
        "preprocess: {shard_size: true}",
        "preprocess.shard_size: True is not an integer; allowed: an integer 1..100000",
    ),
    (
        [],
        "preprocess: {bogus: 1}",
        "preprocess: unknown key(s) ['bogus']; allowed: ['shard_size', 'threads_per_task']",
    ),
    (
        [],
        "preprocess: {clip: {frame_size: 64}}",
        "preprocess: unknown key(s) ['clip']; allowed: ['shard_size', 'threads_per_task']",
    ),
    ([], "preprocess: [1, 2]", "preprocess: expected a mapping of keys, got [1, 2]"),
    (
        ["--player-clients", "tv_samsung,web"],
        "",
        "download.player_clients: 'web' gets SABR-only streams, from which no section can be downloaded; "
        "leave it out",
    ),
    ([], "governor: {bogus: 1}", f"governor: unknown key(s) ['bogus']; allowed: {GOVERNOR_KEYS}"),
    (
        [],
        "governor: {per_node_per_hour: 0}",
        "governor.per_node_per_hour: 0 is out of range; allowed: a number > 0 and <= 10000000",
    ),
    ([], "clip: [1, 2]", "clip: expected a mapping of keys, got [1, 2]"),
    ([], "clipp: {frame_size: 64}", "{config}: unknown section(s) ['clipp']; allowed: " + SECTIONS),
    (
        [],
        "clip: {frame_size: 1000000}",
        "clip.frame_size: 1000000 is out of range; allowed: an integer 16..4096",
    ),
    (
        [],
        "clip: {num_frames: 100000000}",
        "clip.num_frames: 100000000 is out of range; allowed: an integer 1..512",
    ),
    (
        [],
        "clip: {clip_seconds: .nan}",
        "clip.clip_seconds: nan is out of range; allowed: a number > 0 and <= 3600",
    ),
    (
        [],
        "limits: {deadline_seconds: -1}",
        "limits.deadline_seconds: -1 is out of range; allowed: a number > 0 and <= 86400",
    ),
    (
        [],
        "download: {max_attempts: 0}",
        "download.max_attempts: 0 is out of range; allowed: an integer 1..100",
    ),
    ([], "download: {extra: [1]}", "download.extra: expected a mapping of yt-dlp options, got [1]"),
    ([], "- 1\n- 2\n", "{config}: top level must be a mapping of sections, got list"),
    ([], "clip: {frame_size: [", "cannot read config {config}: while parsing a flow node expected"),
    # A config names no program: yt-dlp would run the ffmpeg and JS runtime it names.
    (
        [],
        "download: {ffmpeg: /tmp/evil-ffmpeg}",
        "download.ffmpeg: a config may not name a program to run; use --ffmpeg PATH",
    ),
    (
        [],
        "download: {js_runtimes: {node: {path: /tmp/evil-node}}}",
        "download.js_runtimes.node.path: a config may not name a program to run; use --js-runtime node:PATH",
    ),
    # A few hundred bytes of nested aliases expand to gigabytes ("billion laughs").
    (
        [],
        "clip: {num_frames: [&a [lol, lol], [*a, *a]]}",
        "cannot read config {config}: YAML aliases (*a) are not accepted in a config",
    ),
    # An unencoded '#' or '?' would cut the URL inside the password.
    (
        ["--proxy", "http://user:Hunter2#Secret9@127.0.0.1:9"],
        None,
        "download.proxy: not a proxy URL; allowed: scheme://host:port with nothing after the port, "
        "credentials as USER:PASSWORD@ before the host (percent-encode '#', '?', '/', '@', ':' in them)",
    ),
    (
        ["--egress-id", "office nat; rm -rf /"],
        None,
        "download.egress_id: 1-100 characters of letters, digits and . _ : @ / -, starting with a "
        "letter or digit",
    ),
    (
        [],
        "download: {proxy: 'http://127.0.0.1:1', proxies: ['http://127.0.0.1:2']}",
        "download.proxy and download.proxies both given: give one (a pool of one is a proxy)",
    ),
    (
        ["--yt-dlp-option", 'http_headers={"Cookie ": "SID=x"}'],
        None,
        "download.extra.http_headers: header names are HTTP tokens (letters, digits, -, no spaces or "
        "colons), got ['Cookie ']",
    ),
    (
        ["--yt-dlp-option", 'http_headers={"X-A": "a\\u2028b"}'],
        None,
        "download.extra.http_headers: header values must be single lines without control characters, "
        "got ['X-A']",
    ),
    (["--proxies", "/dev/zero"], None, "--proxies /dev/zero is not a regular file (device)"),
    (["--cookies", "/dev/zero"], None, "cookies file /dev/zero is not a regular file (device)"),
    (
        ["--config", "/dev/zero"],
        None,
        "cannot read config /dev/zero: file /dev/zero is not a regular file (device)",
    ),
]


@pytest.mark.parametrize("flags, yaml_text, expected", PREPROCESS_BAD)
def test_preprocess_refuses_bad_flags_and_configs_in_one_line(
    tmp_path, clips_csv, capsys, flags, yaml_text, expected
):
    out = tmp_path / "shards"
    argv = [str(clips_csv), "--out", str(out), "--executor", "local", *flags]
    config = tmp_path / "bad.yaml"
    if yaml_text is not None:
        config.write_text(yaml_text)
        argv += ["--config", str(config)]
    code, err = _run(preprocess.main, argv, capsys)
    message = expected.format(config=config)
    if message.startswith("cannot read config"):  # YAML's own wording follows: check the start
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"avfusion preprocess: {message}"), err
    else:
        _assert_one_line(code, err, f"avfusion preprocess: {message}")
    assert not out.exists(), "refused before any work: no output folder"


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"abc,1e400,dog,train\n", "{csv}:1: start '1e400' is not a finite number of seconds"),
        (b"abc,1,dog,train\nxyz,nan,dog,train\n", "{csv}:2: start 'nan' is not a finite number of seconds"),
        (b"abc,-5,dog,train\n", "{csv}:1: start '-5' is negative; allowed: seconds 0..10000000"),
        (b"abc,1e9,dog,train\n", "{csv}:1: start '1e9' is out of range; allowed: seconds 0..10000000"),
        (
            b"abc,1,dog,train\nd\xe9j\xe0,1,caf\xe9,train\n",
            "{csv}:2: not UTF-8 text (byte 0xe9); save it as UTF-8",
        ),
    ],
)
def test_preprocess_refuses_a_bad_clip_list_naming_file_and_line(tmp_path, capsys, content, expected):
    csv = tmp_path / "clips.csv"
    csv.write_bytes(content)
    out = tmp_path / "shards"
    code, err = _run(preprocess.main, [str(csv), "--out", str(out), "--executor", "local"], capsys)
    _assert_one_line(code, err, "avfusion preprocess: " + expected.format(csv=csv))
    assert not out.exists()


@pytest.mark.parametrize(
    "content, expected",
    [
        (
            b"url,start\nhttp://127.0.0.1/a.mp4,1e400\n",
            "{csv}: row 1: start inf is not a finite number of seconds",
        ),
        (
            b"url,start\nhttp://127.0.0.1/a.mp4,-3\n",
            "{csv}: row 1: start -3 is negative; allowed: seconds 0..10000000",
        ),
        (
            b"url,start,end\nhttp://127.0.0.1/a.mp4,5,2\n",
            "{csv}: row 1: end 2 is not after start 5.0",
        ),
        (
            b"url,label\nhttp://127.0.0.1/a.mp4,caf\xe9\n",
            "{csv}:2: not UTF-8 text (byte 0xe9); save it as UTF-8",
        ),
    ],
)
def test_preprocess_refuses_a_bad_url_list_naming_file_and_row(tmp_path, capsys, content, expected):
    csv = tmp_path / "urls.csv"
    csv.write_bytes(content)
    out = tmp_path / "shards"
    argv = [str(csv), "--out", str(out), "--executor", "local", "--input-kind", "urls"]
    code, err = _run(preprocess.main, argv, capsys)
    _assert_one_line(code, err, "avfusion preprocess: " + expected.format(csv=csv))


def test_a_url_list_with_numeric_labels_keeps_every_label_as_text(tmp_path):
    """Arrow reads a column of digits as numbers: label 0 is still a label, not "none"."""
    from avfusion.sources import read_url_list

    csv = tmp_path / "urls.csv"
    csv.write_text("url,label,split\nhttp://127.0.0.1/a.mp4,0,train\nhttp://127.0.0.1/b.mp4,7,\n")
    assert [(t.label, t.split) for t in read_url_list(csv)] == [("0", "train"), ("7", None)]


def test_an_out_that_is_a_file_is_one_line(tmp_path, capsys):
    """A library error on the way in (here the OS's) reaches the user as one line; which
    words it uses is the storage layer's."""
    out = tmp_path / "not-a-folder"
    out.write_text("mine")
    (tmp_path / "videos").mkdir()  # a folder: nothing to download, no solver check
    argv = [str(tmp_path / "videos"), "--out", str(out), "--executor", "local"]
    code, err = _run(preprocess.main, argv, capsys)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("avfusion preprocess: ") and str(out.name) in err, err
    assert out.read_text() == "mine"


def test_verbose_adds_the_traceback_before_the_same_line(tmp_path, clips_csv, capsys):
    argv = [str(clips_csv), "--out", str(tmp_path / "s"), "--executor", "local", "--shard-size", "-1"]
    code, err = _run(preprocess.main, [*argv, "--verbose"], capsys)
    assert code == 2 and err.startswith("Traceback"), err
    last = err.rstrip("\n").splitlines()[-1]
    assert (
        last
        == "avfusion preprocess: preprocess.shard_size: -1 is out of range; allowed: an integer 1..100000"
    )


def test_good_values_at_the_bounds_are_accepted(tmp_path, clips_csv):
    """The ends of each range are allowed: the bounds refuse only what is outside."""
    config = tmp_path / "edge.yaml"
    config.write_text(
        "clip: {frame_size: 16, num_frames: 512, clip_seconds: 3600}\n"
        "preprocess: {shard_size: 100000, threads_per_task: 1}\n"
        "governor: {min_spacing: 0, jitter: 0}\n"
        "limits: {deadline_seconds: 86400}\n"
        "train: {epochs: 1}\n"  # a recipe's section another job reads is not an error here
    )
    argv = [str(clips_csv), "--out", str(tmp_path / "s"), "--config", str(config), "--limit", "0"]
    args = preprocess.build_parser().parse_args(argv)
    cfg = preprocess.load_config(args)
    job = preprocess.job_of(args, cfg)
    assert (cfg.clip.frame_size, cfg.clip.num_frames, cfg.shard_size, job.limit) == (16, 512, 100000, 0)
    assert job.governor.min_spacing == 0.0 and cfg.limits.deadline_seconds == 86400.0


# --- train -----------------------------------------------------------------------------

TRAIN_BAD = [
    (["--epochs", "0"], None, "train.epochs: 0 is out of range; allowed: an integer 1..100000"),
    (["--batch-size", "0"], None, "train.batch_size: 0 is out of range; allowed: an integer 1..65536"),
    (["--lr", "nan"], None, "train.lr: nan is out of range; allowed: a number > 0 and <= 10"),
    (["--lr", "-0.1"], None, "train.lr: -0.1 is out of range; allowed: a number > 0 and <= 10"),
    (
        ["--steps-per-epoch", "0"],
        None,
        "train.steps_per_epoch: 0 is out of range; allowed: an integer 1..1000000000",
    ),
    (["--workers", "-1"], None, "train.workers: -1 is not allowed; allowed: an integer 0..1024 or 'auto'"),
    (["--seed", "-1"], None, "train.seed: -1 is out of range; allowed: an integer 0..4294967295"),
    (["--ray-workers", "0"], None, "executor.ray_workers: 0 is out of range; allowed: an integer 1..100000"),
    (["--epochs", "abc"], None, "argument --epochs: invalid int value: 'abc' (see avfusion train --help)"),
    ([], "train: {epochs: abc}", "train.epochs: 'abc' is not an integer; allowed: an integer 1..100000"),
    ([], "train: {bogus: 1}", "train: unknown key(s) ['bogus']; allowed: "),
    (
        [],
        "train: {model: {embed_dim: 0}}",
        "train.model.embed_dim: 0 is out of range; allowed: an integer 1..65536",
    ),
    (
        [],
        "train: {model: {modalities: all}}",
        "train.model.modalities: 'all' is not allowed; allowed: one of ('both', 'audio', 'video')",
    ),
    (
        [],
        "train: {loss: {label_smoothing: 2}}",
        "train.loss.label_smoothing: 2 is out of range; allowed: a number 0..1",
    ),
    (
        [],
        "train: {augment: {p_audio: 1.5}}",
        "train.augment.p_audio: 1.5 is out of range; allowed: a number 0..1",
    ),
    (
        [],
        "train: {augment: {crop_frames: 100000000}}",
        "train.augment.crop_frames: 100000000 is out of range; allowed: an integer 0..512",
    ),
    (
        [],
        "train: {model: {audio_frontend: mel}}",
        "train.model.audio_frontend: 'mel' is not allowed; allowed: one of ('gabor', 'conv')",
    ),
    (
        [],
        "train: {workers: many}",
        "train.workers: 'many' is not allowed; allowed: an integer 0..1024 or 'auto'",
    ),
    ([], "train: [1, 2]", "train: expected a mapping of keys, got [1, 2]"),
    ([], "trian: {epochs: 1}", "{config}: unknown section(s) ['trian']; allowed: " + SECTIONS),
]


@pytest.mark.parametrize("flags, yaml_text, expected", TRAIN_BAD)
def test_train_refuses_bad_flags_and_recipes_in_one_line(tmp_path, capsys, flags, yaml_text, expected):
    out = tmp_path / "run"
    argv = [str(tmp_path / "shards"), "--out", str(out), *flags]
    config = tmp_path / "recipe.yaml"
    if yaml_text is not None:
        config.write_text(yaml_text)
        argv += ["--config", str(config)]
    code, err = _run(train.main, argv, capsys)
    message = "avfusion train: " + expected.format(config=config)
    if message.endswith("allowed: "):  # the allowed list is TrainConfig's whole field list
        assert code == 2 and err.count("\n") == 1 and err.startswith(message), err
    else:
        _assert_one_line(code, err, message)
    assert not out.exists()


# --- label -----------------------------------------------------------------------------

LABEL_BAD = [
    (["--top-k", "0"], "label.top_k: 0 is out of range; allowed: an integer 1..1000"),
    (["--actors", "0"], "label.actors: 0 is out of range; allowed: an integer 1..1024"),
    (["--gpus-per-actor", "-1"], "label.gpus_per_actor: -1.0 is out of range; allowed: a number 0..64"),
    (["--gpus-per-actor", "nan"], "label.gpus_per_actor: nan is out of range; allowed: a number 0..64"),
    (["--actor-memory-mb", "0"], "label.actor_memory_mb: 0 is out of range; allowed: an integer 1..4194304"),
    (["--model-batch", "0"], "label.model_batch: 0 is out of range; allowed: an integer 1..65536"),
    (["--decode-batch", "-1"], "label.decode_batch: -1 is out of range; allowed: an integer 1..65536"),
    (["--part-rows", "0"], "label.part_rows: 0 is out of range; allowed: an integer 1..10000000"),
    (["--concurrency", "0"], "executor.concurrency: 0 is out of range; allowed: an integer 1..100000"),
    (["--num-cpus", "0"], "executor.num_cpus: 0 is out of range; allowed: an integer 1..100000"),
    (["--extensions", ","], "--extensions: ',' names no extension; allowed: e.g. mp4,wav"),
    (["--top-k", "abc"], "argument --top-k: invalid int value: 'abc' (see avfusion label --help)"),
]


@pytest.mark.parametrize("flags, expected", LABEL_BAD)
def test_label_refuses_bad_flags_in_one_line(tmp_path, capsys, flags, expected):
    (tmp_path / "videos").mkdir()
    out = tmp_path / "labels"
    argv = [
        str(tmp_path / "videos"),
        str(out),
        "--checkpoint",
        str(tmp_path / "last.pt"),
        "--executor",
        "local",
    ]
    code, err = _run(label.main, [*argv, *flags], capsys)
    _assert_one_line(code, err, f"avfusion label: {expected}")
    assert not out.exists()


# --- evaluate --------------------------------------------------------------------------

EVALUATE_BAD = [
    (["--batch-size", "0"], "evaluate.batch_size: 0 is out of range; allowed: an integer 1..65536"),
    (["--workers", "-1"], "evaluate.workers: -1 is out of range; allowed: an integer 0..1024"),
    (["--seed", "-1"], "evaluate.seed: -1 is out of range; allowed: an integer 0..4294967295"),
    (
        ["--batch-size", "1e400"],
        "argument --batch-size: invalid int value: '1e400' (see avfusion evaluate --help)",
    ),
]


@pytest.mark.parametrize("flags, expected", EVALUATE_BAD)
def test_evaluate_refuses_bad_flags_in_one_line(tmp_path, capsys, flags, expected):
    out = tmp_path / "report"
    argv = [str(tmp_path / "last.pt"), "--shards", str(tmp_path / "shards"), "--out", str(out)]
    code, err = _run(evaluate.main, [*argv, *flags], capsys)
    _assert_one_line(code, err, f"avfusion evaluate: {expected}")
    assert not out.exists()


# --- demo ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--epochs", "0"], "train.epochs: 0 is out of range; allowed: an integer 1..100000"),
        (["--num-cpus", "0"], "executor.num_cpus: 0 is out of range; allowed: an integer 1..100000"),
    ],
)
def test_demo_refuses_bad_flags_before_any_step(tmp_path, capsys, flags, expected):
    out = tmp_path / "demo"
    code, err = _run(demo.main, ["--out", str(out), *flags], capsys)
    _assert_one_line(code, err, f"avfusion demo: {expected}")
    assert not out.exists(), "refused before the preprocess step"


# --- the real console script -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv, yaml_text, expected",
    [
        (
            ["preprocess", "{csv}", "--out", "{out}", "--config", "{config}"],
            "governor: {bogus: 1}\n",
            f"avfusion preprocess: governor: unknown key(s) ['bogus']; allowed: {GOVERNOR_KEYS}",
        ),
        (
            ["train", "{out}", "--out", "{out}/run", "--config", "{config}"],
            "train: {model: {embed_dim: -4}}\n",
            "avfusion train: train.model.embed_dim: -4 is out of range; allowed: an integer 1..65536",
        ),
        (
            ["preprocess", "{csv}", "--out", "{out}", "--limit", "-1"],
            "",
            "avfusion preprocess: preprocess.limit: -1 is out of range; allowed: an integer >= 0",
        ),
    ],
)
def test_console_script_prints_one_line_and_exits_2(tmp_path, clips_csv, cli_env, argv, yaml_text, expected):
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    out = tmp_path / "out"
    cmd = ["avfusion", *(a.format(csv=clips_csv, out=out, config=config) for a in argv)]
    proc = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == expected + "\n", proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["clip.mp4", "--checkpoint", "x.pt", "--top-k", "0"], "label.top_k: 0 is out of range"),
        (["clip.mp4", "--checkpoint", "x.pt", "--top-k", "abc"], "argument --top-k: invalid int value"),
        (["clip.mp4", "--checkpoint", "{missing}.pt"], "No such file or directory: "),
    ],
)
def test_predict_refuses_with_one_line(tmp_path, capsys, argv, message):
    from jobs import predict

    argv = [a.format(missing=tmp_path / "missing") for a in argv]
    try:
        status = predict.main(argv)
    except SystemExit as exc:  # argparse's own refusal (JobParser: one line)
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("avfusion predict: ") and message in err, err
    assert "Traceback" not in err


def test_an_input_that_is_a_device_or_fifo_is_one_line(tmp_path, capsys):
    import os

    fifo = tmp_path / "clips.csv"
    os.mkfifo(fifo)
    for source, kind in (("/dev/zero", "device"), (str(fifo), "fifo")):
        out = tmp_path / f"out-{kind}"
        code, err = _run(preprocess.main, [source, "--out", str(out), "--executor", "local"], capsys)
        _assert_one_line(code, err, f"avfusion preprocess: input {source} is not a file or folder ({kind})")
        assert not out.exists()


def test_labels_for_a_list_input_is_one_line_not_ignored(tmp_path, clips_csv, capsys):
    argv = [str(clips_csv), "--out", str(tmp_path / "o"), "--executor", "local", "--labels", str(clips_csv)]
    code, err = _run(preprocess.main, argv, capsys)
    _assert_one_line(
        code,
        err,
        f"avfusion preprocess: --labels labels a folder's files; the input {clips_csv} is a vggsound list",
    )
