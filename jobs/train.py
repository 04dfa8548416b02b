"""`avfusion train SHARDS --out RUN`: train the fusion model (or a unimodal baseline).

Launch paths, one training loop:
  single process   avfusion train SHARDS --out RUN
  torchrun DDP     torchrun --nproc_per_node=N -m jobs.train SHARDS --out RUN
  Ray Train        avfusion train SHARDS --out RUN --ray-workers N [--gpu] [--address ADDR]
Re-running with the same --out resumes from RUN/last.pt.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from avfusion import storage
from avfusion.config import ConfigError, from_dict, load_yaml


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avfusion train", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("shards", help="shard folder written by avfusion preprocess")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics, plots")
    p.add_argument("--config", help="recipe: a preset name (small, vggsound) or a YAML path/URL with a train: section")
    p.add_argument("--modalities", choices=["both", "audio", "video"], help="fusion (both) or a unimodal baseline")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--video-weights", help="imagenet | none | PATH to a ResNet-18 state dict")
    p.add_argument("--workers", type=int, help="data-loader workers per process")
    p.add_argument("--seed", type=int)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--no-augment", action="store_true", help="ablation: no modality dropout / corruption")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--ray-workers", type=int, help="train with Ray Train TorchTrainer on N workers")
    p.add_argument("--gpu", action="store_true", help="with --ray-workers: one GPU per worker")
    p.add_argument("--address", help="with --ray-workers: Ray cluster address (default: embedded or the job's)")
    p.add_argument("--verbose", action="store_true", help="with --ray-workers: show Ray's own log lines")
    return p


def load_config(args):
    from avfusion.train import TrainConfig

    data = dict((load_yaml(args.config).get("train") or {}) if args.config else {})
    data.update(shards=args.shards, out=args.out)
    for name in ("modalities", "epochs", "batch_size", "steps_per_epoch", "lr", "video_weights", "workers",
                 "seed", "compile"):
        value = getattr(args, name)
        if value is not None:
            data[name] = value
    cfg = from_dict(TrainConfig, data, prefix="train")
    if args.no_augment:
        cfg = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, enabled=False))
    return cfg


def _ray_train_loop(config: dict) -> None:
    """Runs on each Ray Train worker; Ray has already set up the process group."""
    import ray.train

    from avfusion.distributed import setup
    from avfusion.train import TrainConfig, train

    cfg = from_dict(TrainConfig, config["train"])
    train(cfg, setup(config["device"], local_rank=ray.train.get_context().get_local_rank()))


def _run_config(RunConfig, out: str):
    """Ray Train's own state goes beside the run, through the same fsspec filesystem
    (so an s3:// run needs no second set of credentials or endpoint)."""
    if storage.is_local(out):
        return RunConfig(storage_path=storage.join(out, "ray"), name="train")
    arrow_fs, path = storage.arrow_filesystem(storage.join(out, "ray"))
    return RunConfig(storage_path=path, storage_filesystem=arrow_fs, name="train")


def run_ray_train(cfg, args) -> int:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from avfusion.executor.ray_tasks import ray_session

    with ray_session(args.address, verbose=args.verbose, worker_output=True):
        trainer = TorchTrainer(
            _ray_train_loop,
            train_loop_config={"train": dataclasses.asdict(cfg), "device": "cuda" if args.gpu else "cpu"},
            scaling_config=ScalingConfig(num_workers=args.ray_workers, use_gpu=args.gpu),
            run_config=_run_config(RunConfig, cfg.out),
        )
        try:
            trainer.fit()
            shard_error = None
        except Exception as exc:  # Ray Train wraps a worker's error in its own
            shard_error = _shard_error(exc)
            if shard_error is None:
                raise
    if shard_error is not None:  # after Ray's shutdown, so its flushed logs do not follow ours
        print(f"avfusion train: {shard_error.brief()}", file=sys.stderr)
        return 1
    return 0


def _shard_error(exc: BaseException) -> ShardReadError | None:
    """The ShardReadError behind a Ray Train failure, if that is what stopped it: Ray
    Train reports a worker's exception as its own (``WorkerGroupError.worker_failures``,
    or a cause chain), which would bury the one line that names the shard."""
    from shards.loader import ShardReadError

    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ShardReadError):
            return e
        todo += [e.__cause__, e.__context__, *getattr(e, "worker_failures", {}).values()]
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args)
    except ConfigError as exc:
        print(f"avfusion train: {exc}", file=sys.stderr)
        return 2
    cfg = dataclasses.replace(cfg, out=storage.absolute(cfg.out), shards=storage.absolute(cfg.shards))
    if args.ray_workers:
        return run_ray_train(cfg, args)
    from avfusion.distributed import setup, teardown
    from avfusion.train import train

    from shards.loader import ShardReadError

    try:
        train(cfg, setup(args.device))
    except ShardReadError as exc:  # named, after retries: never a silent skip or spin
        print(f"avfusion train: {exc.brief()}", file=sys.stderr)
        return 1
    finally:
        teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
