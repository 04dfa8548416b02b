"""Cluster files parse, point at real entry points whose parsers accept their arguments,
and keep the security defaults; the local scripts start, run a job and stop a cluster."""

import importlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
KUBERAY = sorted((REPO / "cluster" / "kuberay").glob("*.yaml"))


def _check_entrypoint(command: str) -> None:
    argv = shlex.split(command)
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("jobs.")
    module = importlib.import_module(argv[2])
    module.build_parser().parse_args(argv[3:])  # exits (fails the test) on a bad flag


@pytest.mark.parametrize("path", KUBERAY, ids=[p.stem for p in KUBERAY])
def test_kuberay_rayjobs(path):
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    _check_entrypoint(doc["spec"]["entrypoint"])
    assert yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"]["RAY_AUTH_MODE"] == "token"
    assert "cookies" not in path.read_text().lower() or "secretName" in path.read_text()
    assert {p.stem for p in KUBERAY} == {"preprocess", "train", "label"}


def test_autoscaler_yaml():
    doc = yaml.safe_load((REPO / "cluster" / "autoscaler.yaml").read_text())
    assert {"head", "cpu_worker", "gpu_worker"} <= set(doc["available_node_types"])
    head = " ".join(doc["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "--dashboard-host=127.0.0.1" in head
    for line in (REPO / "cluster" / "autoscaler.yaml").read_text().splitlines():
        if "ray job submit" in line and "-m jobs." in line:
            assert "--working-dir" in line


def test_submit_script_lines_parse():
    text = (REPO / "cluster" / "local" / "submit.sh").read_text()
    for job in ("preprocess", "train", "label"):
        block = text.split(f"  {job})", 1)[1].split(";;", 1)[0].replace("\\\n", " ")
        cmd = block.split(" -- ", 1)[1]
        cmd = cmd.replace('"$PY"', "python").replace('"$OUT', '"/tmp/out').strip()
        _check_entrypoint(cmd)


@pytest.mark.slow
def test_local_scripts_start_submit_stop(tmp_path, cli_env):
    import shutil
    import tempfile

    from tests.ray_cluster import free_port

    state = Path(tempfile.mkdtemp(prefix="avfc-", dir="/tmp"))  # short: Ray's unix socket paths
    ports = {
        "AVFUSION_RAY_PORT": free_port("127.0.0.4"),
        "AVFUSION_DASHBOARD_PORT": free_port("127.0.0.4"),
        "AVFUSION_CLIENT_PORT": free_port("127.0.0.4"),
        "AVFUSION_HEAD_AGENT_PORT": free_port("127.0.0.4"),
        "AVFUSION_WORKER_AGENT_PORT": free_port("127.0.0.4"),
    }
    env = dict(
        cli_env,
        RAY=str(Path(sys.executable).parent / "ray"),
        AVFUSION_RAY_HOST="127.0.0.4",
        **{k: str(v) for k, v in ports.items()},
        AVFUSION_OUT=str(tmp_path / "out"),
        AVFUSION_PYTHON=sys.executable,
    )
    env.pop("RAY_ADDRESS", None)
    start = subprocess.run(
        ["bash", "cluster/local/start.sh", str(state)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        env["RAY_ADDRESS"] = f"http://127.0.0.4:{ports['AVFUSION_DASHBOARD_PORT']}"
        job = subprocess.run(
            ["bash", "cluster/local/submit.sh", "preprocess"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-2000:]
        manifest = json.loads((tmp_path / "out" / "shards" / "manifest.json").read_text())
        # Every labelled sample clip became a sample (the bundled clips all decode).
        from avfusion.sources import scan_folder

        tasks, _ = scan_folder(REPO / "avfusion/sample_data/clips", REPO / "avfusion/sample_data/labels.csv")
        assert len(tasks) >= 30
        assert manifest["num_samples"] == len(tasks) == sum(manifest["by_split"].values()), manifest[
            "by_split"
        ]
        assert manifest["num_shards"] == -(-len(tasks) // 6)  # --shard-size 6 in submit.sh
    finally:
        groups = [int((state / f).read_text()) for f in ("head.pgid", "worker.pgid") if (state / f).exists()]
        subprocess.run(["bash", "cluster/local/stop.sh", str(state)], cwd=REPO, env=env, timeout=60)
        shutil.rmtree(state, ignore_errors=True)
    assert groups and not _live_members(groups), "stop.sh must end every process it started"


def _live_members(groups: list[int]) -> list[int]:
    """PIDs still running in these process groups (zombies awaiting a reaper excluded)."""
    live = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) in groups and fields[0] != "Z":
                live.append(int(entry.name))
    return live


def test_kuberay_train_pods_have_shared_memory_for_their_loaders():
    """A multi-worker DataLoader passes batches through /dev/shm (Docker's default is
    64 MB): the train pods mount a memory emptyDir there, sized for every loader
    worker's prefetched batches, and have the CPUs a Ray Train worker reserves."""
    from avfusion.config import ClipSpec
    from avfusion.executor.ray_train import cpus_per_worker
    from jobs import train as train_job

    doc = yaml.safe_load((REPO / "cluster" / "kuberay" / "train.yaml").read_text())
    cfg = train_job.load_config(
        train_job.build_parser().parse_args(shlex.split(doc["spec"]["entrypoint"])[3:])
    )
    clip = ClipSpec()  # the shards' default: 224², 8 frames, 10 s at 16 kHz
    batch_bytes = cfg.batch_size * (clip.num_frames * clip.frame_size**2 * 3 + clip.num_samples * 4)
    units = {"Mi": 2**20, "Gi": 2**30}
    for group in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        shm = [
            v
            for v in spec["volumes"]
            if v["name"]
            in {
                m["name"]
                for c in spec["containers"]
                for m in c.get("volumeMounts", [])
                if m["mountPath"] == "/dev/shm"
            }
        ]
        assert len(shm) == 1 and shm[0]["emptyDir"]["medium"] == "Memory", spec["volumes"]
        size = shm[0]["emptyDir"]["sizeLimit"]
        size = int(size[:-2]) * units[size[-2:]]
        limits = spec["containers"][0]["resources"]["limits"]
        assert size >= 2 * cfg.workers * batch_bytes, (size, cfg.workers, batch_bytes)  # 2 prefetched each
        assert size <= int(limits["memory"][:-2]) * units[limits["memory"][-2:]] // 2
        assert cpus_per_worker(cfg) <= int(limits["cpu"])


def _quantity(text: str | int | float) -> float:
    """A Kubernetes quantity of CPUs or GPUs: "8", "1.5", "500m"."""
    text = str(text)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _kuberay_nodes(doc: dict, at_most: bool) -> list[dict[str, float]]:
    """The Ray nodes a RayJob's cluster starts, as Ray would advertise them: the pod's
    CPU limit truncated (Ray truncates a fractional quota) unless rayStartParams says
    num-cpus, its nvidia.com/gpu limit unless num-gpus; a worker group at ``replicas``,
    or at ``maxReplicas`` when ``at_most``."""

    def node(group: dict) -> dict[str, float]:
        params = group.get("rayStartParams") or {}
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpu = float(params["num-cpus"]) if "num-cpus" in params else float(int(_quantity(limits["cpu"])))
        gpu = _quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        return {"CPU": cpu, "GPU": gpu}

    spec = doc["spec"]["rayClusterSpec"]
    nodes = [node(spec["headGroupSpec"])]
    for group in spec["workerGroupSpecs"]:
        nodes += [node(group)] * group["maxReplicas" if at_most else "replicas"]
    return nodes


def _kuberay_request(argv: list[str]) -> tuple[int, dict[str, float], str]:
    """(how many, each one's resources, what) the entrypoint asks Ray for at once."""
    module = importlib.import_module(argv[2])
    args = module.build_parser().parse_args(argv[3:])
    if argv[2] == "jobs.train":
        cfg = module.load_config(args)
        # "auto" would be resolved on the driver, the head pod, not on the workers' pods
        assert isinstance(cfg.workers, int), "a KubeRay train entrypoint names --workers"
        per_worker = {"CPU": 1 + cfg.workers, **({"GPU": 1.0} if args.gpu else {})}
        return args.ray_workers or 1, per_worker, "Ray Train worker"
    if argv[2] == "jobs.label" and args.gpus_per_actor:
        return args.actors, {"GPU": args.gpus_per_actor}, "model actor"  # a GPU actor reserves no CPU
    if argv[2] == "jobs.label":
        return args.actors, {"CPU": 1.0}, "model actor"
    return 1, {"CPU": 1.0}, "task"  # preprocess: one task per shard, queued beyond the CPUs


@pytest.mark.parametrize("path", KUBERAY, ids=[p.stem for p in KUBERAY])
def test_kuberay_rayjobs_schedule_as_written(path):
    """What the entrypoint asks for fits the cluster the manifest starts: without
    autoscaling at the groups' replicas (Ray Train and a fixed actor pool would wait
    forever for more), with it at maxReplicas and a train job told to wait for nodes;
    and every job has a CPU for its decode or download tasks."""
    from avfusion.executor.ray_train import cluster_shortfall, workers_that_fit

    doc = yaml.safe_load(path.read_text())
    argv = shlex.split(doc["spec"]["entrypoint"])
    count, each, kind = _kuberay_request(argv)
    autoscaling = bool(doc["spec"]["rayClusterSpec"].get("enableInTreeAutoscaling"))
    now = _kuberay_nodes(doc, at_most=False)
    assert workers_that_fit(now, {"CPU": 1}) >= 1, "no CPU for tasks"
    if autoscaling:
        shortfall = cluster_shortfall(_kuberay_nodes(doc, at_most=True), count, each, kind)
        assert shortfall is None, f"{path.name} at maxReplicas: {shortfall}"
        if argv[2] == "jobs.train" and cluster_shortfall(now, count, each):
            assert "--wait-for-nodes" in argv, (
                f"{path.name}: the job would refuse before the autoscaler adds nodes"
            )
    else:
        shortfall = cluster_shortfall(now, count, each, kind)
        assert shortfall is None, f"{path.name} (no autoscaling, replicas as written): {shortfall}"


def test_the_kuberay_check_can_fail():
    """Two one-GPU pods cannot hold four one-GPU Ray Train workers; autoscaling to 16 can."""
    doc = yaml.safe_load((REPO / "cluster" / "kuberay" / "train.yaml").read_text())
    group = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group.update(replicas=2, minReplicas=0, maxReplicas=16)
    from avfusion.executor.ray_train import workers_that_fit

    assert workers_that_fit(_kuberay_nodes(doc, at_most=False), {"CPU": 7, "GPU": 1}) == 2
    assert workers_that_fit(_kuberay_nodes(doc, at_most=True), {"CPU": 7, "GPU": 1}) == 16
    group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "6500m"
    assert workers_that_fit(_kuberay_nodes(doc, at_most=True), {"CPU": 7, "GPU": 1}) == 0
