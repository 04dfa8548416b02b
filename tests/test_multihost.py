"""A multi-host Ray cluster that shares no disk: head and worker node on separate network
hosts (network namespaces, see tests/netns_cluster.py), clips, CSV, shards, checkpoints,
reports and Parquet all in S3. Jobs go in with ``ray job submit --working-dir`` exactly as
on a real cluster: preprocess → train (Ray Train, 2 workers) → evaluate → label, then the
results are read back from S3 with pyarrow and every clip is accounted for."""

import json
import sys

import pytest

from avfusion.synth import SynthSpec, make_class_conditional_set
from tests.netns_cluster import NetnsCluster, netns_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not netns_available(), reason="needs root for ip netns (the test hosts)"),
]
PY = sys.executable


def test_preprocess_train_evaluate_label_across_hosts_through_s3(tmp_path):
    clips = tmp_path / "clips"
    make_class_conditional_set(
        clips, per_class=2, spec=SynthSpec(width=64, height=64, duration=2.0, fps=8, sample_rate=16_000)
    )
    names = sorted(p.stem for p in clips.glob("*.mp4"))
    b = "s3://avf-multihost"
    with NetnsCluster(cpus_per_node=1) as cluster:
        # The data goes into S3 from the head's host (the test machine cannot reach it).
        cluster.python(
            "head",
            f"""
import s3fs, pathlib
fs = s3fs.S3FileSystem()
fs.mkdir('avf-multihost')
for p in sorted(pathlib.Path('{clips}').glob('*.mp4')):
    fs.put_file(str(p), 'avf-multihost/clips/' + p.name)
fs.put_file('{clips}/labels.csv', 'avf-multihost/labels.csv')
fs.pipe_file('avf-multihost/clip.yaml', b'clip:\\n  clip_seconds: 2.0\\n  frame_size: 64\\n')
# workers 0: a Ray Train worker reserves 1 + loader workers CPUs, and nodes have 1
fs.pipe_file('avf-multihost/train.yaml', b'train:\\n  model:\\n    embed_dim: 32\\n    audio_width: 8\\n'
                                         b'  workers: 0\\n  batch_size: 4\\n')
""",
        )
        steps = {
            "preprocess": [
                PY,
                "-m",
                "jobs.preprocess",
                f"{b}/clips",
                "--labels",
                f"{b}/labels.csv",
                "--out",
                f"{b}/shards",
                "--config",
                f"{b}/clip.yaml",
                "--shard-size",
                "3",
            ],
            "train": [
                PY,
                "-m",
                "jobs.train",
                f"{b}/shards",
                "--out",
                f"{b}/run",
                "--config",
                f"{b}/train.yaml",
                "--ray-workers",
                "2",
                "--epochs",
                "1",
                "--steps-per-epoch",
                "2",
            ],
            "evaluate": [
                PY,
                "-m",
                "jobs.evaluate",
                f"{b}/run/last.pt",
                "--shards",
                f"{b}/shards",
                "--split",
                "test",
                "--conditions",
                "normal",
                "--out",
                f"{b}/report",
                "--workers",
                "1",
            ],
            "label": [
                PY,
                "-m",
                "jobs.label",
                f"{b}/clips",
                f"{b}/labels",
                "--checkpoint",
                f"{b}/run/last.pt",
            ],
        }
        for name, entrypoint in steps.items():
            proc = cluster.submit(*entrypoint)
            assert proc.returncode == 0, f"{name}:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
        tasks = cluster.run(
            "head",
            str(cluster.env["PATH"].split(":")[0] + "/ray"),
            "list",
            "tasks",
            "--address",
            cluster.dashboard,
            "--format",
            "json",
            "--filter",
            "name=process_shard_item",
            "--limit",
            "100",
        )
        nodes_used = {t["node_id"] for t in json.loads(tasks.stdout)}
        result = json.loads(
            cluster.python(
                "head",
                """
import io, json, tarfile, s3fs, pyarrow as pa, pyarrow.parquet as pq
fs = s3fs.S3FileSystem()
manifest = json.loads(fs.cat_file('avf-multihost/shards/manifest.json'))
keys = []
for s in manifest['shards']:
    with tarfile.open(fileobj=io.BytesIO(fs.cat_file('avf-multihost/shards/' + s['tar']))) as tar:
        keys += [json.load(tar.extractfile(m))['key'] for m in tar.getmembers() if m.name.endswith('.json')]
parts = sorted(fs.glob('avf-multihost/labels/part-*.parquet'))
# bytes: see test_multihost_kill
table = pa.concat_tables([pq.read_table(io.BytesIO(fs.cat_file(p))) for p in parts])
print(json.dumps({'manifest': manifest, 'keys': keys, 'labels': table.column('key').to_pylist(),
                  'errors': table.column('error_class').null_count, 'rows': table.num_rows,
                  'ckpt': fs.exists('avf-multihost/run/last.pt'),
                  'ray_state': bool(fs.find('avf-multihost/run/ray')),
                  'metrics': fs.cat_file('avf-multihost/run/metrics.jsonl').decode(),
                  'report': json.loads(fs.cat_file('avf-multihost/report/robustness.json'))['meta']}))
""",
            )
        )
    assert len(nodes_used) == 2, "shard tasks ran on both hosts"
    assert result["manifest"]["complete"] and result["manifest"]["num_samples"] == len(names) == 12
    assert sorted(result["keys"]) == names
    assert (
        sorted(result["labels"]) == [f"{n}.mp4" for n in names] and result["errors"] == result["rows"] == 12
    )
    assert result["ckpt"] and result["ray_state"], "checkpoint and Ray Train state in S3"
    assert [json.loads(x)["epoch"] for x in result["metrics"].splitlines()] == [0]
    assert result["report"]["n_clips"] == result["manifest"]["by_split"]["test"] > 0
