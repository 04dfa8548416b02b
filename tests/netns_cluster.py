"""Two network hosts on one machine: a Ray head and a worker node, each in its own
network namespace joined by a veth pair, with an S3 server (moto) on the head's host.

Why namespaces: a multi-host Ray cluster shares no disk and reaches other nodes only over
the network; two namespaces give each node its own network stack and address (no
loopback shortcut between them), so nothing can pass between the nodes except through
Ray and the S3 server. Addresses are in 10.200.N.0/24, which exists only inside these two
namespaces (no route to or from the rest of the machine). Each node has its own Ray temp
dir; the only data path both see is S3. Everything started is in its own process group
and is killed by group; the namespaces are deleted on stop.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def netns_available() -> bool:
    if os.geteuid() != 0:
        return False
    name = f"avfprobe{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except (OSError, subprocess.CalledProcessError):
        return False
    _ip("netns", "del", name)
    return True


class NetnsCluster:
    RAY_PORT, DASHBOARD_PORT, S3_PORT = 6379, 8265, 9000  # per namespace: nothing else binds there

    def __init__(self, cpus_per_node: int = 1):
        tag = f"{os.getpid() % 10000:04d}{random.randint(0, 99):02d}"
        net = random.randint(1, 254)
        self.ns = {"head": f"avfh{tag}", "worker": f"avfw{tag}"}
        self.ip = {"head": f"10.200.{net}.1", "worker": f"10.200.{net}.2"}
        self.veth = (f"avh{tag}", f"avw{tag}")
        self.cpus = cpus_per_node
        self.temp = {n: tempfile.mkdtemp(prefix=f"avfmh{n[0]}-", dir="/tmp") for n in self.ns}
        self.groups: dict[str, list[int]] = {"head": [], "worker": [], "s3": []}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_ADDRESS"))}
        self.env.update(
            RAY_AUTH_MODE="token",
            PATH=f"{BIN}{os.pathsep}{self.env.get('PATH', '')}",
            AWS_ENDPOINT_URL=self.s3_endpoint,
            AWS_ACCESS_KEY_ID="avfusion-test",
            AWS_SECRET_ACCESS_KEY="avfusion-test-secret",
            PYTHONPATH=str(REPO),
        )

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.ip['head']}:{self.S3_PORT}"

    @property
    def dashboard(self) -> str:
        return f"http://{self.ip['head']}:{self.DASHBOARD_PORT}"

    def cmd(self, node: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[node], *argv]

    def run(self, node: str, *argv: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.cmd(node, *argv), env=self.env, capture_output=True, text=True, timeout=timeout, **kw
        )

    def python(self, node: str, code: str, timeout: float = 300) -> str:
        """Run Python ``code`` on ``node``'s network host; its stdout (fails on error)."""
        proc = self.run(node, sys.executable, "-c", code, timeout=timeout, cwd=str(REPO))
        if proc.returncode != 0:
            raise RuntimeError(f"{node}: {proc.stderr[-3000:]}")
        return proc.stdout

    def _spawn(self, group: str, node: str, *argv: str, wait: bool) -> subprocess.Popen:
        # Both namespaces share the machine's hostname, which resolves to loopback: gloo
        # (Ray Train's CPU collective) must be told its interface, as on hosts whose
        # hostname does not resolve to their cluster address.
        env = dict(self.env, GLOO_SOCKET_IFNAME=self.veth[0 if node == "head" else 1])
        proc = subprocess.Popen(
            self.cmd(node, *argv),
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.groups[group].append(proc.pid)
        if wait:
            out, _ = proc.communicate(timeout=180)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(argv[:3])} failed on {node}:\n{out[-3000:]}")
        return proc

    def start(self) -> NetnsCluster:
        for n in self.ns.values():
            _ip("netns", "add", n)
        _ip("link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1])
        for node, dev in zip(("head", "worker"), self.veth, strict=False):
            _ip("link", "set", dev, "netns", self.ns[node])
            _ip("-n", self.ns[node], "addr", "add", f"{self.ip[node]}/24", "dev", dev)
            _ip("-n", self.ns[node], "link", "set", dev, "up")
            _ip("-n", self.ns[node], "link", "set", "lo", "up")
        self._spawn(
            "s3", "head", str(BIN / "moto_server"), "-H", self.ip["head"], "-p", str(self.S3_PORT), wait=False
        )
        self.python(
            "head",
            "import time, urllib.request\n"
            "for _ in range(100):\n"
            f"    try: urllib.request.urlopen('{self.s3_endpoint}'); break\n"
            "    except Exception: time.sleep(0.2)\n",
        )
        self.start_head()
        self.start_worker()
        self.wait_for_nodes(2)
        return self

    def start_head(self) -> None:
        self._spawn(
            "head",
            "head",
            str(BIN / "ray"),
            "start",
            "--head",
            "--disable-usage-stats",
            "--node-ip-address",
            self.ip["head"],
            "--port",
            str(self.RAY_PORT),
            "--dashboard-host",
            self.ip["head"],
            "--dashboard-port",
            str(self.DASHBOARD_PORT),
            "--num-cpus",
            str(self.cpus),
            "--temp-dir",
            self.temp["head"],
            wait=True,
        )

    def start_worker(self) -> None:
        self._spawn(
            "worker",
            "worker",
            str(BIN / "ray"),
            "start",
            "--disable-usage-stats",
            "--address",
            f"{self.ip['head']}:{self.RAY_PORT}",
            "--node-ip-address",
            self.ip["worker"],
            "--num-cpus",
            str(self.cpus),
            "--temp-dir",
            self.temp["worker"],
            wait=True,
        )

    def kill_worker(self) -> None:
        """The worker host goes down: every process of its node, at once."""
        self._kill(self.groups["worker"], signal.SIGKILL)
        self.groups["worker"] = []

    def nodes(self) -> list[dict]:
        out = self.run(
            "head",
            str(BIN / "ray"),
            "list",
            "nodes",
            "--address",
            self.dashboard,
            "--format",
            "json",
            timeout=60,
        )
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []

    def wait_for_nodes(self, n: int, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if sum(node.get("state") == "ALIVE" for node in self.nodes()) >= n:
                return
            time.sleep(1)
        raise TimeoutError(f"{n} Ray nodes did not come up")

    def submit(self, *entrypoint: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir`` from the head's host (retried while its job
        agent starts)."""
        deadline = time.time() + 90
        while True:
            proc = self.run(
                "head",
                str(BIN / "ray"),
                "job",
                "submit",
                "--address",
                self.dashboard,
                "--working-dir",
                str(REPO),
                "--",
                *entrypoint,
                timeout=timeout,
            )
            if "No available agent" not in proc.stdout + proc.stderr or time.time() > deadline:
                return proc
            time.sleep(3)

    @staticmethod
    def _kill(groups: list[int], sig: int) -> None:
        for group in groups:
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        every = [g for gs in self.groups.values() for g in gs]
        self._kill(every, signal.SIGTERM)
        time.sleep(2)
        self._kill(every, signal.SIGKILL)
        for n in self.ns.values():
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        for d in self.temp.values():
            shutil.rmtree(d, ignore_errors=True)

    def __enter__(self) -> NetnsCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def job_status(cluster: NetnsCluster, job_id: str) -> str:
    out = cluster.run(
        "head", str(BIN / "ray"), "job", "status", "--address", cluster.dashboard, job_id, timeout=60
    )
    import re

    # The CLI reports on stderr: "Job 'raysubmit_…' succeeded" / "failed" / "was stopped".
    done = re.search(r"job '\S+' (succeeded|failed|was stopped)", (out.stdout + out.stderr).lower())
    return (
        {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[done.group(1)]
        if done
        else "RUNNING"
    )


def submit_no_wait(cluster: NetnsCluster, *entrypoint: str) -> str:
    deadline = time.time() + 90
    while True:
        proc = cluster.run(
            "head",
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            cluster.dashboard,
            "--no-wait",
            "--working-dir",
            str(REPO),
            "--",
            *entrypoint,
            timeout=120,
        )
        text = proc.stdout + proc.stderr
        if "No available agent" not in text or time.time() > deadline:
            break
        time.sleep(3)
    for word in text.replace("'", " ").split():
        if word.startswith("raysubmit_"):
            return word
    raise RuntimeError(f"no job id in: {text[-2000:]}")


def wait_job(cluster: NetnsCluster, job_id: str, timeout: float = 600) -> tuple[str, str]:
    deadline = time.time() + timeout
    state = "UNKNOWN"
    while time.time() < deadline:
        state = job_status(cluster, job_id)
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    logs = cluster.run(
        "head", str(BIN / "ray"), "job", "logs", "--address", cluster.dashboard, job_id, timeout=60
    )
    return state, logs.stdout + logs.stderr
