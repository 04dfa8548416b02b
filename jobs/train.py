"""`avfusion train SHARDS --out RUN`: train the fusion model (or a unimodal baseline).

Launch paths, one training loop:
  single process   avfusion train SHARDS --out RUN
  torchrun DDP     torchrun --nproc_per_node=N -m jobs.train SHARDS --out RUN
  Ray Train        avfusion train SHARDS --out RUN --ray-workers N [--gpu] [--address ADDR]
                   [--wait-for-nodes]
Re-running with the same --out resumes from RUN/last.pt.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from avfusion import storage
from avfusion.config import ExecutorSpec, from_dict, load_yaml
from avfusion.cpus import usable_cpus
from jobs import JobParser, refuse, refusing


def build_parser() -> argparse.ArgumentParser:
    p = JobParser(
        prog="avfusion train",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("shards", help="shard folder written by avfusion preprocess")
    p.add_argument("--out", required=True, help="run folder: checkpoints, metrics, plots")
    p.add_argument(
        "--config", help="recipe: a preset name (small, vggsound) or a YAML path/URL with a train: section"
    )
    p.add_argument(
        "--modalities", choices=["both", "audio", "video"], help="fusion (both) or a unimodal baseline"
    )
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--video-weights", help="imagenet | none | PATH to a ResNet-18 state dict")
    p.add_argument("--workers", type=int, help="data-loader workers per process")
    p.add_argument("--seed", type=int)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument(
        "--no-augment",
        action="store_true",
        help="ablation: no augmentation (content, crops, modality dropout); mixup as the recipe says",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--ray-workers", type=int, help="train with Ray Train TorchTrainer on N workers")
    p.add_argument("--gpu", action="store_true", help="with --ray-workers: one GPU per worker")
    p.add_argument(
        "--address", help="with --ray-workers: Ray cluster address (default: embedded or the job's)"
    )
    p.add_argument(
        "--wait-for-nodes",
        action="store_true",
        help="with --ray-workers on an autoscaling cluster: when the nodes up now cannot hold every "
        "worker, wait for more to join (default: refuse with one line)",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show a refused input's traceback and, with --ray-workers, Ray's own log lines",
    )
    return p


def load_config(args):
    """The recipe's ``train:`` section, then the flags: ``--modalities`` and
    ``--video-weights`` set ``train.model``, the others ``train`` itself."""
    from avfusion.train import TrainConfig

    ExecutorSpec(ray_workers=args.ray_workers)  # bounds: one line, exit 2
    data = dict((load_yaml(args.config).get("train") or {}) if args.config else {})
    data.update(shards=args.shards, out=args.out)
    for name in ("epochs", "batch_size", "steps_per_epoch", "lr", "workers", "seed", "compile"):
        value = getattr(args, name)
        if value is not None:
            data[name] = value
    cfg = from_dict(TrainConfig, data, prefix="train")
    model = {
        name: getattr(args, name)
        for name in ("modalities", "video_weights")
        if getattr(args, name) is not None
    }
    if model:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model))
    if args.no_augment:
        cfg = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, enabled=False))
    return cfg


@refusing("avfusion train")  # a bad flag or recipe value: one line, exit 2
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config(args)
    cfg = dataclasses.replace(cfg, out=storage.absolute(cfg.out), shards=storage.absolute(cfg.shards))
    from avfusion.checkpoint import CheckpointError
    from avfusion.executor.ray_train import ClusterTooSmall
    from avfusion.loader import ShardReadError
    from avfusion.train import Diverged

    try:
        if args.ray_workers:
            _ray_fit(cfg, args)
        else:
            from avfusion.train import run

            env = os.environ  # torchrun says who this process is; the library reads no environment
            run(
                cfg,
                args.device,
                rank=int(env.get("RANK", 0)),
                world=int(env.get("WORLD_SIZE", 1)),
                local_rank=int(env.get("LOCAL_RANK", 0)),
            )
    except ShardReadError as exc:  # named, after retries: never a silent skip or spin
        # (for Ray Train: after Ray's shutdown, so its flushed logs do not follow ours)
        print(f"avfusion train: {exc.brief()}", file=sys.stderr)
        return 1
    except CheckpointError as exc:  # RUN/last.pt is not a checkpoint this version resumes from
        return refuse("avfusion train", exc, args.verbose)
    except Diverged as exc:
        print(f"avfusion train: {exc}", file=sys.stderr)
        return 1
    except ClusterTooSmall as exc:  # Ray Train would wait forever for resources no node has
        return refuse("avfusion train", exc, args.verbose)
    return 0


def _ray_fit(cfg, args) -> None:
    """Ray Train inside a Ray session: the job's cluster (--address, RAY_ADDRESS) or an
    embedded one with enough logical CPUs for the workers' reservations."""
    from avfusion.executor import ray_train
    from avfusion.executor.ray_tasks import ray_session
    from jobs import ray_address

    cpus = max(usable_cpus(), args.ray_workers * ray_train.cpus_per_worker(cfg))
    with ray_session(ray_address(args.address), num_cpus=cpus, verbose=args.verbose, worker_output=True):
        ray_train.fit(cfg, args.ray_workers, use_gpu=args.gpu, wait_for_nodes=args.wait_for_nodes)


if __name__ == "__main__":
    sys.exit(main())
