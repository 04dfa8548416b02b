"""`avfusion doctor --address`: one function run once on every alive Ray node.

Nodes of one cluster differ (images, GPUs, mounted Secrets), so each check runs where
the work will: one zero-CPU task pinned to each node (``NodeAffinitySchedulingStrategy``,
hard). This module knows nothing of the checks (``avfusion.doctor`` owns them): it
returns, per node, what the function returned or why it did not run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from avfusion.executor.ray_tasks import ray_session


@dataclass(frozen=True)
class NodeRun:
    label: str  # "node ADDRESS (id; CPU n, GPU m)"
    result: Any = None
    error: str | None = None  # "Type: message" when the function did not run there


@dataclass(frozen=True)
class ClusterRun:
    resources: str  # "CPU 4, GPU 1, memory 12.0 GiB" of the whole cluster
    nodes: list[NodeRun]


def run_on_every_node(address: str, fn: Callable[..., Any], *args: Any, timeout: float = 300) -> ClusterRun:
    """``fn(*args)`` in one task pinned to each alive node of the cluster at ``address``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    with ray_session(address):
        nodes = [n for n in ray.nodes() if n["Alive"]]
        total = ray.cluster_resources()
        resources = ", ".join(
            [f"{k} {v:g}" for k, v in sorted(total.items()) if k in ("CPU", "GPU")]
            + [f"memory {total.get('memory', 0) / 2**30:.1f} GiB"]
        )
        task = ray.remote(num_cpus=0, max_retries=0)(fn)
        refs = []
        for n in nodes:
            strategy = NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)
            refs.append((n, task.options(scheduling_strategy=strategy).remote(*args)))
        runs = []
        for n, ref in refs:
            res = ", ".join(f"{k} {v:g}" for k, v in sorted(n["Resources"].items()) if k in ("CPU", "GPU"))
            label = f"node {n['NodeManagerAddress']} ({n['NodeID'][:8]}; {res})"
            try:
                runs.append(NodeRun(label, result=ray.get(ref, timeout=timeout)))
            except Exception as exc:  # noqa: BLE001 - the node could not run the function
                runs.append(NodeRun(label, error=f"{type(exc).__name__}: {exc}"))
        return ClusterRun(resources, runs)
