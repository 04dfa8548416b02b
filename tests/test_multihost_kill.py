"""The worker host of a multi-host cluster (see tests/netns_cluster.py) dies mid-job:
preprocess and label complete on what is left, or exit non-zero naming what to redo, and
a re-run gives exactly the key set of an uninterrupted run."""

import json
import sys
import time

import pytest

from avfusion.synth import SynthSpec, make_class_conditional_set
from tests.netns_cluster import NetnsCluster, netns_available, submit_no_wait, wait_job

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not netns_available(), reason="needs root for ip netns (the test hosts)"),
]
PY = sys.executable


def _count(cluster, pattern: str) -> int:
    return int(cluster.python("head", f"import s3fs; print(len(s3fs.S3FileSystem().glob('{pattern}')))"))


def _wait_count(cluster, pattern: str, n: int, timeout: float = 180) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _count(cluster, pattern) >= n:
            return True
        time.sleep(0.5)
    return False


@pytest.mark.timeout(1200)
def test_worker_host_lost_mid_preprocess_and_mid_label(tmp_path):
    """The worker host dies mid-job: the job completes on what is left, or exits non-zero
    naming what to redo; a re-run then gives exactly the key set of an uninterrupted run."""
    clips = tmp_path / "clips"
    make_class_conditional_set(
        clips, per_class=3, spec=SynthSpec(width=64, height=64, duration=2.0, fps=8, sample_rate=16_000)
    )
    names = sorted(p.stem for p in clips.glob("*.mp4"))
    b = "s3://avf-kill"
    # Two CPUs per node: after the worker host is lost the head alone must still fit the
    # label job's model actor (one CPU) beside its decode tasks.
    with NetnsCluster(cpus_per_node=2) as cluster:
        cluster.python(
            "head",
            f"""
import pathlib, s3fs
from avfusion import checkpoint
from avfusion.model import FusionModel, ModelConfig
fs = s3fs.S3FileSystem()
fs.mkdir('avf-kill')
for p in sorted(pathlib.Path('{clips}').glob('*.mp4')):
    fs.put_file(str(p), 'avf-kill/clips/' + p.name)
fs.put_file('{clips}/labels.csv', 'avf-kill/labels.csv')
cfg = ModelConfig(num_classes=6, embed_dim=16, audio_width=8, video_weights='none')
checkpoint.save({{'model': FusionModel(cfg).state_dict(), 'model_config': cfg.__dict__,
                 'label_map': {{str(i): i for i in range(6)}},
                 'clip': {{'sample_rate': 16000, 'clip_seconds': 2.0, 'num_frames': 8, 'frame_size': 64}}}},
                '{b}/tiny.pt')
""",
        )
        pre = [
            PY,
            "-m",
            "jobs.preprocess",
            f"{b}/clips",
            "--labels",
            f"{b}/labels.csv",
            "--out",
            f"{b}/shards",
            "--shard-size",
            "1",
            "--frame-size",
            "64",
            "--threads",
            "1",
        ]
        job = submit_no_wait(cluster, *pre)
        assert _wait_count(cluster, "avf-kill/shards/*_stats.json", 3), "preprocess never got going"
        cluster.kill_worker()
        state, logs = wait_job(cluster, job, timeout=400)
        if state != "SUCCEEDED":
            assert "INCOMPLETE:" in logs, logs[-3000:]
            again = cluster.submit(*pre, "--retry-failed")
            assert again.returncode == 0, again.stdout[-3000:]
        done = _count(cluster, "avf-kill/shards/*_stats.json")
        keys = json.loads(
            cluster.python(
                "head",
                """
import io, json, tarfile, s3fs
fs = s3fs.S3FileSystem()
m = json.loads(fs.cat_file('avf-kill/shards/manifest.json'))
keys = []
for s in m['shards']:
    with tarfile.open(fileobj=io.BytesIO(fs.cat_file('avf-kill/shards/' + s['tar']))) as tar:
        keys += [json.load(tar.extractfile(x))['key'] for x in tar.getmembers() if x.name.endswith('.json')]
print(json.dumps({'keys': keys, 'complete': m['complete']}))
""",
            )
        )
        assert sorted(keys["keys"]) == names and keys["complete"], (state, done)

        cluster.start_worker()
        cluster.wait_for_nodes(2)
        lab = [
            PY,
            "-m",
            "jobs.label",
            f"{b}/clips",
            f"{b}/labels",
            "--checkpoint",
            f"{b}/tiny.pt",
            "--part-rows",
            "1",
            "--decode-batch",
            "1",
        ]
        job = submit_no_wait(cluster, *lab)
        assert _wait_count(cluster, "avf-kill/labels/part-*.parquet", 2), "label never got going"
        cluster.kill_worker()
        state, logs = wait_job(cluster, job, timeout=400)
        if state != "SUCCEEDED":
            again = cluster.submit(*lab)
            assert again.returncode == 0, again.stdout[-3000:]
        rows = json.loads(
            cluster.python(
                "head",
                """
import io, json, s3fs, pyarrow as pa, pyarrow.parquet as pq
fs = s3fs.S3FileSystem()
# Parts fetched as bytes: pyarrow reading through s3fs could abort at interpreter exit
# ("terminate called without an active exception") after the script had done its work.
parts = sorted(fs.glob('avf-kill/labels/part-*.parquet'))
t = pa.concat_tables([pq.read_table(io.BytesIO(fs.cat_file(p))) for p in parts])
print(json.dumps(list(zip(t.column('key').to_pylist(), t.column('error_class').to_pylist()))))
""",
            )
        )
    assert sorted(k for k, _ in rows) == [f"{n}.mp4" for n in names], "every file exactly once"
    assert all(e is None for _, e in rows), rows
