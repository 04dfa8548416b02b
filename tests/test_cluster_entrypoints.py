"""The cluster files' own entrypoints, run with their own arguments against a real S3 server.

Each KubeRay RayJob's ``spec.entrypoint`` and the autoscaler file's ``ray job submit``
line are read from the files and submitted with ``ray job submit --working-dir`` to a
real Ray cluster on loopback whose nodes see only the three standard AWS variables
(as the RayJobs' ``avfusion-s3`` Secret gives them). Their ``s3://`` paths are used as
written: the test creates the buckets they name and puts a VGGSound CSV and clips there.

What only a real deployment has is supplied by arguments appended after the file's own
(argparse keeps the last value), each named here:
- ``--url-template``: the clips come from a loopback HTTP server that honours Range,
  not YouTube (yt-dlp still downloads only each section);
- ``--cookies``: the YouTube cookies Secret is mounted at /secrets on a pod; here a
  cookies file in the test's temp folder;
- train: ``--gpu`` is dropped and ``--epochs 1 --batch-size 2 --workers 0`` appended, since
  30 epochs of 64-clip batches at 224² on 4 workers, each reserving 7 CPUs for itself and
  its loader workers, do not fit a 2-core CI machine. Its
  ``--ray-workers 4``, S3 input/output and ``--video-weights imagenet`` (no internet: a
  warning and random init) stay.
The label entrypoint runs exactly as written: the cluster advertises 4 logical GPUs so
``--actors 4 --gpus-per-actor 1`` schedules, and each actor, finding no CUDA, runs on CPU.
"""

import csv
import io
import json
import shlex
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from avfusion import sample_data, storage
from jobs.bench.origin import RangeServer
from tests.ray_cluster import LocalCluster
from tests.s3_server import S3Server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def kuberay_entrypoint(name: str) -> list[str]:
    doc = yaml.safe_load((REPO / "cluster" / "kuberay" / f"{name}.yaml").read_text())
    return shlex.split(doc["spec"]["entrypoint"])


def autoscaler_entrypoint(bucket: str) -> list[str]:
    """The job in the autoscaler file's ``ray job submit`` comment, BUCKET filled in."""
    lines = (REPO / "cluster" / "autoscaler.yaml").read_text().replace("\\\n#", " ").splitlines()
    (line,) = [x for x in lines if "ray job submit" in x and "jobs.preprocess" in x]
    return shlex.split(line.split(" -- ", 1)[1].replace("BUCKET", bucket))


def without(argv: list[str], flag: str) -> list[str]:
    assert flag in argv, f"{flag} is no longer in the entrypoint: update this test"
    return [a for a in argv if a != flag]


def bucket_of(url: str) -> str:
    assert url.startswith("s3://")
    return url.split("/")[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """S3 server, loopback 'YouTube' serving 8 bundled real clips, and the Ray cluster."""
    tmp = tmp_path_factory.mktemp("entrypoints")
    rows = list(csv.reader(io.StringIO(sample_data.labels_csv().read_text())))
    classes = sorted({r[2] for r in rows})[:2]
    chosen = []
    for label in classes:
        mine = [r for r in rows if r[2] == label]
        chosen += [r for r in mine if r[3] == "train"][:3] + [r for r in mine if r[3] == "test"][:1]
    served = tmp / "served"
    served.mkdir()
    for r in chosen:
        (served / f"{r[0]}.mp4").write_bytes(
            (sample_data.clips_dir() / f"{r[0]}_{int(r[1]):06d}.mp4").read_bytes()
        )
    cookies = tmp / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tSID\tavfusion-test\n")
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(chosen)  # VGGSound's CSV has no header

    s3 = S3Server().start()
    s3.apply_env()  # this process (to seed the buckets) and, through it, the Ray nodes
    try:
        with (
            RangeServer(served) as http,
            LocalCluster(cpus_per_node=8, workers=0, gpus_per_node=4) as cluster,
        ):
            yield {
                "s3": s3,
                "http": http,
                "cluster": cluster,
                "csv": out.getvalue(),
                "rows": chosen,
                "served": served,
                "cookies": str(cookies),
                "tmp": tmp,
            }
    finally:
        s3.stop()


def submit(world, argv: list[str]):
    proc = world["cluster"].submit(*argv, working_dir=str(REPO), timeout=900)
    assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    return proc


def keys_of(rows) -> list[str]:
    return sorted(f"{r[0]}_{int(r[1]):06d}" for r in rows)


def test_kuberay_and_autoscaler_entrypoints_against_s3(world):
    source = ["--url-template", world["http"].url("{id}.mp4"), "--cookies", world["cookies"]]

    # KubeRay preprocess: CSV in S3 → shards in S3, both splits.
    pre = kuberay_entrypoint("preprocess")
    csv_url, shards = pre[3], pre[pre.index("--out") + 1]
    world["s3"].make_bucket(bucket_of(csv_url))
    storage.write_text(csv_url, world["csv"])
    assert "--min-spacing" in pre and "--downloads-per-hour" in pre  # the politeness flags run as written
    submit(world, pre + source)
    manifest = storage.read_json(f"{shards}/manifest.json")
    assert manifest["complete"] and manifest["num_samples"] == len(world["rows"]) == 8, manifest
    assert manifest["by_split"] == {"train": 6, "test": 2}
    assert sorted(k for s in manifest["shards"] for k in _tar_keys(f"{shards}/{s['tar']}")) == keys_of(
        world["rows"]
    )

    # KubeRay train: Ray Train on 4 workers from S3 shards, run folder (checkpoints, Ray state) in S3.
    train = without(kuberay_entrypoint("train"), "--gpu")
    run = train[train.index("--out") + 1]
    assert train[3] == shards, "train reads what preprocess wrote"
    # Each worker reserves 1 + its loader workers' CPUs (7 with the file's --workers 6, as
    # its 8-CPU pods have); this one-machine cluster has 8 CPUs for all 4 workers.
    submit(world, train + ["--epochs", "1", "--batch-size", "2", "--workers", "0"])
    assert storage.exists(f"{run}/last.pt") and storage.find(f"{run}/ray"), storage.find(run)
    assert [r["epoch"] for r in map(json.loads, storage.read_text(f"{run}/metrics.jsonl").splitlines())] == [
        0
    ]
    ranks = [storage.read_json(f"{run}/ranks/rank{r}.json") for r in range(4)]
    assert {r["world"] for r in ranks} == {4}

    # KubeRay label, exactly as written: the incoming folder in S3 → Parquet parts in S3.
    label = kuberay_entrypoint("label")
    incoming, labels = label[3], label[4]
    assert label[label.index("--checkpoint") + 1] == f"{run}/last.pt", "label uses what train wrote"
    names = sorted(p.name for p in world["served"].iterdir())[:4]
    for name in names:
        storage.publish_file(str(world["served"] / name), f"{incoming}/{name}")
    submit(world, label)
    parts = storage.list_files(labels, "part-*.parquet")
    table = pa.concat_tables([storage.read_parquet(p) for p in parts])
    assert sorted(table.column("key").to_pylist()) == names
    assert table.column("error_class").null_count == table.num_rows == 4
    w = table.to_pandas()[["w_audio", "w_video"]].sum(axis=1)
    assert (abs(w - 1) < 1e-4).all()

    # Autoscaler: the preprocess job its comment submits, BUCKET filled in.
    auto = autoscaler_entrypoint("avf-autoscaler")
    world["s3"].make_bucket("avf-autoscaler")
    storage.write_text(auto[3], world["csv"])
    submit(world, auto + source)
    out = auto[auto.index("--out") + 1]
    manifest = storage.read_json(f"{out}/manifest.json")
    assert manifest["complete"] and manifest["num_samples"] == 8


def _tar_keys(url: str) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(url))) as tar:
        return [json.load(tar.extractfile(m))["key"] for m in tar.getmembers() if m.name.endswith(".json")]
