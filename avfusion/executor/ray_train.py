"""Ray Train (TorchTrainer) launch of the one training loop (``avfusion.train.train``).

Why here: Ray is imported only in ``avfusion.executor``. Each worker trains on the
device Ray gave it (``ray.train.torch.get_device()``: its assigned GPU, or the CPU
when it asked for none, whatever CUDA the node shows) and joins the process group Ray
Train set up. A worker reserves one CPU for its training process plus one per loader
worker it forks, so Ray never packs more loaders on a node than it has cores.
The caller opens the Ray session (``ray_session``) around :func:`fit`.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import TYPE_CHECKING, Any

from avfusion import storage
from avfusion.train import TrainConfig

if TYPE_CHECKING:
    from ray.train import RunConfig

    from avfusion.loader import ShardReadError


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


def fit(cfg: TrainConfig, num_workers: int, use_gpu: bool = False) -> None:
    """Train on ``num_workers`` Ray Train workers of the current Ray session. A worker's
    ``ShardReadError`` is re-raised as itself (Ray Train wraps it in its own error,
    which would bury the one line that names the shard)."""
    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = resolve_workers(cfg, use_gpu)
    assert isinstance(cfg.workers, int)  # resolve_workers made "auto" a count
    resources = {"CPU": 1 + cfg.workers, **({"GPU": 1} if use_gpu else {})}
    have = ray.cluster_resources().get("CPU", 0)
    if num_workers * resources["CPU"] > have:  # Ray Train would wait, silently, for the autoscaler
        print(
            f"avfusion train: {num_workers} Ray Train workers × {resources['CPU']} CPUs (1 + {cfg.workers} "
            f"loader workers each) > the cluster's {have:g} CPUs now: waiting for nodes to join "
            "(lower --workers to fit)",
            file=sys.stderr,
            flush=True,
        )
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
        shard_error = _shard_error(exc)
        if shard_error is None:
            raise
        raise shard_error from None


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


def _shard_error(exc: BaseException) -> ShardReadError | None:
    """The ShardReadError behind a Ray Train failure (``WorkerGroupError.worker_failures``
    or a cause chain), or None."""
    from avfusion.loader import ShardReadError

    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ShardReadError):
            return e
        todo += [e.__cause__, e.__context__, *getattr(e, "worker_failures", {}).values()]
    return None
