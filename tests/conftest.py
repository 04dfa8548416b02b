import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

# The fast tier (`make test-fast`: AVF_TEST_TIER=fast, `-m "not slow"`) is what a
# contributor runs while working: no Ray, no servers, no subprocesses. It is enforced,
# not hoped for: in that tier starting a process or listening on a socket fails the
# test, naming the marker it needs, so an unmarked heavy test cannot creep in.
FAST_TIER = os.environ.get("AVF_TEST_TIER") == "fast"


# ctypes.util.find_library (soundfile, av) asks these at import: not a test's process.
_LIBRARY_LOOKUPS = {"ldconfig", "gcc", "cc", "ld", "objdump"}


def _refused(what: str) -> RuntimeError:
    return RuntimeError(f"the fast test tier starts no {what}: mark this test @pytest.mark.slow")


def pytest_collection_finish(session):
    """After collection (skip conditions may probe the machine), before any test."""
    if not FAST_TIER:
        return
    execute_child = subprocess.Popen._execute_child

    def guarded(self, args, *rest, **kwargs):
        argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
        if os.path.basename(str(argv[0])) not in _LIBRARY_LOOKUPS:
            raise _refused(f"subprocess ({argv[0]})")
        return execute_child(self, args, *rest, **kwargs)

    def listen(self, *args, **kwargs):
        raise _refused("server")

    subprocess.Popen._execute_child = guarded  # type: ignore[method-assign]
    socket.socket.listen = listen  # type: ignore[method-assign]


@pytest.fixture
def cli_env():
    """Environment for running the installed ``avfusion`` script in a subprocess."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the in-process job tests (jobs reuse an initialised Ray)."""
    import ray

    from avfusion.executor.ray_tasks import embedded_init_kwargs

    ray.init(**embedded_init_kwargs(2), log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory, ray_local):
    """Class-conditional synthetic clips (2 s, 64² frames) preprocessed into 10 shards of
    10 or 9 clips: the shared dataset of the training and eval tests. ``--concurrency 2``
    fixes the plan's slots, so the layout (and every model trained on it) does not follow
    the CPUs of whichever Ray the session joined."""
    from avfusion.synth import SynthSpec, make_class_conditional_set
    from jobs import preprocess

    root = tmp_path_factory.mktemp("synthetic")
    make_class_conditional_set(
        root / "clips",
        per_class=16,
        spec=SynthSpec(width=64, height=64, duration=2.0, fps=8, sample_rate=16_000),
    )
    (root / "clip.yaml").write_text("clip:\n  clip_seconds: 2.0\n  frame_size: 64\n")
    assert (
        preprocess.main(
            [
                str(root / "clips"),
                "--labels",
                str(root / "clips" / "labels.csv"),
                "--out",
                str(root / "shards"),
                "--config",
                str(root / "clip.yaml"),
                "--shard-size",
                "10",
                "--concurrency",
                "2",
            ]
        )
        == 0
    )
    return root / "shards"


SMALL_TRAIN_YAML = (
    "train:\n  model:\n    embed_dim: 64\n    audio_width: 16\n  lr: 0.003\n  workers: 1\n  batch_size: 16\n"
)


@pytest.fixture
def small_train_config(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(SMALL_TRAIN_YAML)
    return path
