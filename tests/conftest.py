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


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise RuntimeError(f"the fast test tier starts no {what}: mark this test @pytest.mark.slow")
    return refuse


def pytest_configure(config):
    if FAST_TIER:
        subprocess.Popen._execute_child = _refuse("subprocess")  # type: ignore[method-assign]
        socket.socket.listen = _refuse("server")  # type: ignore[method-assign]


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
    """Class-conditional synthetic clips (2 s, 64² frames) preprocessed into shards of
    uneven size (10, 10, …, 6): the shared dataset of the training and eval tests."""
    from avfusion.synth import SynthSpec, make_class_conditional_set
    from jobs import preprocess

    root = tmp_path_factory.mktemp("synthetic")
    make_class_conditional_set(root / "clips", per_class=16, spec=SynthSpec(width=64, height=64, duration=2.0,
                                                                            fps=8, sample_rate=16_000))
    (root / "clip.yaml").write_text("clip:\n  clip_seconds: 2.0\n  frame_size: 64\n")
    assert preprocess.main([str(root / "clips"), "--labels", str(root / "clips" / "labels.csv"), "--out",
                            str(root / "shards"), "--config", str(root / "clip.yaml"), "--shard-size", "10"]) == 0
    return root / "shards"


SMALL_TRAIN_YAML = "train:\n  embed_dim: 64\n  audio_width: 16\n  lr: 0.003\n  workers: 1\n  batch_size: 16\n"


@pytest.fixture
def small_train_config(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(SMALL_TRAIN_YAML)
    return path
