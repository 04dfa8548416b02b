"""Ray Train (TorchTrainer) launch of the one training loop (``avfusion.train.train``).

Why here: Ray is imported only in ``avfusion.executor``. Each worker trains on the
device Ray gave it (``ray.train.torch.get_device()``: its assigned GPU, or the CPU
when it asked for none, whatever CUDA the node shows) and joins the process group Ray
Train set up. A worker reserves one CPU for its training process plus one per loader
worker it forks, so Ray never packs more loaders on a node than it has cores.
The caller opens the Ray session (``ray_session``) around :func:`fit`.

Before Ray Train starts, :func:`fit` checks that the cluster's live nodes can hold every
worker (CPUs and GPUs, each worker whole on one node): Ray Train would otherwise wait,
silently and forever, for resources no node has. Whether an autoscaler could add the
nodes is the caller's word (``wait_for_nodes``): the installed Ray has no public API
that says whether one runs or which node shapes it may launch up to what count.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from avfusion import storage
from avfusion.train import TrainConfig

if TYPE_CHECKING:
    from ray.train import RunConfig


class ClusterTooSmall(ValueError):
    """The Ray cluster's live nodes cannot hold every Ray Train worker asked for."""


def workers_that_fit(nodes: Sequence[Mapping[str, float]], per_worker: Mapping[str, float]) -> int:
    """How many workers needing ``per_worker`` (Ray resource name → amount) these nodes
    (each node's total resources) hold at once, every worker whole on one node."""
    return sum(_fits_on(node, per_worker) for node in nodes)


def _fits_on(node: Mapping[str, float], need: Mapping[str, float]) -> int:
    # The epsilon: Ray keeps resources in fixed point, so 0.1 × 10 may read 0.999…
    counts = [math.floor(node.get(name, 0.0) / amount + 1e-6) for name, amount in need.items() if amount > 0]
    return min(counts, default=1 << 30)


def cluster_shortfall(
    nodes: Sequence[Mapping[str, float]],
    num_workers: int,
    per_worker: Mapping[str, float],
    kind: str = "Ray Train worker",
) -> str | None:
    """Why ``num_workers`` ``kind``s of ``per_worker`` do not fit these nodes (one line),
    or None when they do."""
    fit = workers_that_fit(nodes, per_worker)
    if fit >= num_workers:
        return None
    shapes = Counter(_shape(node, per_worker) for node in nodes)
    have = "; ".join(f"{n} × {shape}" for shape, n in sorted(shapes.items())) or "no live nodes"
    need = _shape(per_worker, per_worker)
    if not any(_fits_on(node, per_worker) for node in nodes):
        return f"no node of the Ray cluster can hold one {kind} of {need} (its nodes: {have})"
    return f"{num_workers} {kind}s of {need} each do not fit the Ray cluster: its nodes hold {fit} ({have})"


def _shape(resources: Mapping[str, float], names: Mapping[str, float]) -> str:
    """ "7 CPUs + 1 GPU": the amounts of the resources ``names`` lists."""
    parts = []
    for name in sorted(names, key=lambda n: (n != "CPU", n)):
        amount = resources.get(name, 0.0)
        parts.append(f"{amount:g} {name}{'' if amount == 1 or name not in ('CPU', 'GPU') else 's'}")
    return " + ".join(parts)


def cpus_per_worker(cfg: TrainConfig) -> int:
    """The training process plus its DataLoader workers (``auto`` resolved as on a
    node like this one: see :func:`resolve_workers`)."""
    workers = resolve_workers(cfg, use_gpu=False).workers
    assert isinstance(workers, int)  # resolve_workers made "auto" a count
    return 1 + workers


def resolve_workers(cfg: TrainConfig, use_gpu: bool) -> TrainConfig:
    """``workers: auto`` made a count here, on the driver, so that every worker forks
    exactly the loader processes its CPU reservation counted."""
    import torch

    from avfusion.loader import loader_workers

    device = torch.device("cuda" if use_gpu else "cpu")
    return dataclasses.replace(cfg, workers=loader_workers(cfg.workers, device))


def fit(cfg: TrainConfig, num_workers: int, use_gpu: bool = False, wait_for_nodes: bool = False) -> None:
    """Train on ``num_workers`` Ray Train workers of the current Ray session.

    Raises :class:`ClusterTooSmall` when the live nodes cannot hold them, unless
    ``wait_for_nodes`` (an autoscaling cluster): then it says so and lets Ray Train wait.
    A worker's ``ShardReadError``, ``Diverged`` or ``WeightsError`` is re-raised as
    itself (Ray Train wraps it in its own error, which would bury the job's one line)."""
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = resolve_workers(cfg, use_gpu)
    assert isinstance(cfg.workers, int)  # resolve_workers made "auto" a count
    resources = {"CPU": 1 + cfg.workers, **({"GPU": 1} if use_gpu else {})}
    nodes = [node.get("Resources") or {} for node in ray.nodes() if node.get("Alive")]
    shortfall = cluster_shortfall(nodes, num_workers, resources)
    if shortfall and not wait_for_nodes:
        raise ClusterTooSmall(
            f"{shortfall}; a worker's CPUs are 1 + {cfg.workers} loader workers: lower --ray-workers or "
            "--workers, or add nodes (on an autoscaling cluster, --wait-for-nodes waits for them)"
        )
    if shortfall:
        print(f"avfusion train: {shortfall} now: waiting for nodes to join", file=sys.stderr, flush=True)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"train": dataclasses.asdict(cfg)},
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=_run_config(cfg.out),
    )
    try:
        trainer.fit()
    except Exception as exc:
        ours = _our_error(exc)
        if ours is None:
            raise
        raise ours from None


def _worker_loop(config: dict[str, Any]) -> None:
    """Runs on each Ray Train worker: Ray has set up the process group and says which
    rank and device this worker is."""
    import ray.train
    import ray.train.torch

    from avfusion.config import from_dict
    from avfusion.distributed import setup
    from avfusion.train import train

    ctx = ray.train.get_context()
    cfg = from_dict(TrainConfig, config["train"])
    train(
        cfg,
        setup(
            ray.train.torch.get_device(),
            rank=ctx.get_world_rank(),
            world=ctx.get_world_size(),
            local_rank=ctx.get_local_rank(),
        ),
    )


def _run_config(out: str) -> RunConfig:
    """Ray Train's own state goes beside the run, through the same fsspec filesystem
    (so an s3:// run needs no second set of credentials or endpoint)."""
    from ray.train import RunConfig

    if storage.is_local(out):
        return RunConfig(storage_path=storage.join(out, "ray"), name="train")
    arrow_fs, path = storage.arrow_filesystem(storage.join(out, "ray"))
    return RunConfig(storage_path=path, storage_filesystem=arrow_fs, name="train")


def _our_error(exc: BaseException) -> BaseException | None:
    """The error of ours behind a Ray Train failure (``WorkerGroupError.worker_failures``
    or a cause chain) that the job states in one line: a shard that cannot be read, a
    loss gone NaN, corrupt pretrained weights. None for anything else."""
    from avfusion.loader import ShardReadError
    from avfusion.pretrained import WeightsError
    from avfusion.train import Diverged

    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (ShardReadError, Diverged, WeightsError)):
            return e
        todo += [e.__cause__, e.__context__, *getattr(e, "worker_failures", {}).values()]
    return None
