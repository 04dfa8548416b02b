"""`avfusion doctor --address`: the node-local checks once on every alive Ray node.

Nodes of one cluster differ (images, GPUs, mounted Secrets), so each check runs where
the work will: one zero-CPU task pinned to each node (``NodeAffinitySchedulingStrategy``,
hard). A node that cannot run it (no Python env, dead worker) is reported as a FAIL.
"""

from __future__ import annotations


def cluster_checks(address: str, checks_fn, opts) -> list[tuple[str, list]]:
    """``[(node label, [Check, ...]), ...]``: a cluster line first, then one group per node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from avfusion.doctor import FAIL, OK, Check

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        total = ray.cluster_resources()
        summary = ", ".join([f"{k} {v:g}" for k, v in sorted(total.items()) if k in ("CPU", "GPU")]
                            + [f"memory {total.get('memory', 0) / 2 ** 30:.1f} GiB"])
        groups = [("cluster", [Check("ray", OK if nodes else FAIL, f"{len(nodes)} alive nodes at {address}: {summary}",
                                     "start workers (ray start --address=HEAD) or fix --address")])]
        task = ray.remote(num_cpus=0, max_retries=0)(checks_fn)
        refs = {}
        for n in nodes:
            strategy = NodeAffinitySchedulingStrategy(node_id=n["NodeID"], soft=False)
            refs[n["NodeID"]] = (n, task.options(scheduling_strategy=strategy).remote(opts))
        for node_id, (n, ref) in refs.items():
            res = ", ".join(f"{k} {v:g}" for k, v in sorted(n["Resources"].items()) if k in ("CPU", "GPU"))
            label = f"node {n['NodeManagerAddress']} ({node_id[:8]}; {res})"
            try:
                groups.append((label, ray.get(ref, timeout=300)))
            except Exception as exc:  # noqa: BLE001 - the node could not run its checks
                groups.append((label, [Check("node", FAIL, f"checks did not run: {type(exc).__name__}: {exc}",
                                             "see the node's Ray logs; is avfusion installed there?")]))
        return groups
    finally:
        ray.shutdown()
