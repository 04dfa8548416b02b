"""A real Ray cluster on loopback for tests: a head and a worker node on one machine.

Nodes bind to 127.0.0.3 (still loopback): Ray rewrites 127.0.0.1 to the machine's
routable address (``resolve_ip_for_localhost``) but leaves other loopback addresses
alone, so every address it advertises stays on this machine. Token auth is on. Each
``ray start`` runs in its own session, and ``stop`` signals exactly those process
groups, never a ``ray stop`` that would hit other clusters on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
# Not 127.0.0.2: the embedded Ray of the in-process tests advertises that address, and
# two Ray instances on one address collide on their agents' default ports.
HOST = "127.0.0.3"


def free_port(host: str = HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, cpus_per_node: int = 1, workers: int = 1, gpus_per_node: int = 0):
        """``gpus_per_node``: logical GPUs Ray advertises (no device behind them): for
        entrypoints that ask for GPUs, whose code falls back to CPU where CUDA is absent."""
        self.cpus, self.workers, self.gpus = cpus_per_node, workers, gpus_per_node
        self.temp_dir = tempfile.mkdtemp(prefix="avfray-", dir="/tmp")  # short: unix socket paths
        self.port, self.dashboard_port, self.client_port = free_port(), free_port(), free_port()
        self.env = dict(os.environ, RAY_AUTH_MODE="token", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
        self.env.pop("RAY_ADDRESS", None)
        self.groups: list[int] = []

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    def _ray_start(self, *args: str) -> None:
        # Every node's dashboard agent defaults to port 52365 on all interfaces, so a
        # second Ray on this machine (the embedded one of other tests, or our own
        # worker node) would fail to start its agent: give each node a free one.
        proc = subprocess.Popen(
            [
                str(BIN / "ray"),
                "start",
                "--disable-usage-stats",
                "--node-ip-address",
                HOST,
                "--num-cpus",
                str(self.cpus),
                "--num-gpus",
                str(self.gpus),
                "--dashboard-agent-listen-port",
                str(free_port()),
                *args,
            ],
            env=self.env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.groups.append(proc.pid)  # its daemons stay in this process group after it exits
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed:\n{out[-3000:]}")

    def start(self) -> LocalCluster:
        self._ray_start(
            "--head",
            "--port",
            str(self.port),
            "--dashboard-host",
            HOST,
            "--dashboard-port",
            str(self.dashboard_port),
            "--ray-client-server-port",
            str(self.client_port),
            "--temp-dir",
            self.temp_dir,
        )
        for _ in range(self.workers):
            self._ray_start("--address", self.address)
        self.wait_for_nodes(1 + self.workers)
        return self

    def ray(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(BIN / "ray"), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def nodes(self) -> list[dict]:
        out = self.ray("list", "nodes", "--address", self.dashboard, "--format", "json", timeout=60)
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else []

    def wait_for_nodes(self, n: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if sum(node.get("state") == "ALIVE" for node in self.nodes()) >= n:
                return
            time.sleep(1)
        raise TimeoutError(f"{n} Ray nodes did not come up; see {self.temp_dir}")

    def submit(self, *entrypoint: str, working_dir: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``ray job submit``; retried while the head's job agent is still starting (Ray
        answers "No available agent to submit job, please try again later")."""
        deadline = time.time() + 90
        while True:
            proc = self.ray(
                "job",
                "submit",
                "--address",
                self.dashboard,
                "--working-dir",
                working_dir,
                "--",
                *entrypoint,
                timeout=timeout,
            )
            if "No available agent" not in proc.stdout + proc.stderr or time.time() > deadline:
                return proc
            time.sleep(3)

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for group in self.groups:
                try:
                    os.killpg(group, sig)
                except ProcessLookupError:
                    pass
            if sig == signal.SIGTERM:
                time.sleep(2)

    def __enter__(self) -> LocalCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
