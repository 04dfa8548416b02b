"""One training loop for every launch path (single process, torchrun DDP, Ray Train).

Reproducible by construction: the data stream is seeded by (seed, rank, loader worker,
epoch), each batch's augmentation by (seed, rank, worker, epoch, step), and checkpoints
carry the torch RNG states (CPU, and the GPU's when training on one), so ``--resume``
after a crash continues to the same result as an uninterrupted run (on CPU, bit for bit).

The loader ships compact batches (int16 audio, JPEG bytes); the device decodes and
augments them (``avfusion.augment.BatchAugment``), so the CPU work per clip is tar
parsing and FLAC decoding.

The hot loop never waits for the device: loss parts stay device tensors, summed on
the device, and are read every ``log_every`` steps and at the end of the epoch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from typing import Any, cast

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from avfusion import __version__, checkpoint, storage
from avfusion.augment import AugmentConfig, BatchAugment
from avfusion.config import ConfigError, bounded, check_bounds
from avfusion.cpus import usable_cpus
from avfusion.device import to_device
from avfusion.distributed import DistEnv, setup, teardown
from avfusion.loader import (
    Batch,
    Dataset,
    Subset,
    TrainStream,
    data_loader,
    eval_stages,
    loader_workers,
    read_folds,
    seed_of,
)
from avfusion.metrics import Tally
from avfusion.model import FusionModel, LossConfig, ModelConfig, fusion_loss, warn_random_init

CHECKPOINT = "last.pt"
# ModelConfig fields that the shards and the loss decide, never a recipe.
DERIVED_MODEL_KEYS = ("num_classes", "sample_rate", "aux_heads")


@dataclass(frozen=True)
class TrainConfig:
    """A training run: the model (``ModelConfig``) and loss (``LossConfig``) it trains,
    plus optimisation and data. A recipe nests them the same way:
    ``train: {model: {embed_dim: …}, loss: {aux_weight: …}, lr: …}``."""

    shards: str
    out: str
    epochs: int = bounded(10, ge=1, le=100_000)
    batch_size: int = bounded(16, ge=1, le=65_536)
    # default: train samples / (batch × ranks), at least 1
    steps_per_epoch: int | None = bounded(None, ge=1, le=1_000_000_000)
    lr: float = bounded(1e-3, gt=0, le=10)
    weight_decay: float = bounded(0.01, ge=0, le=10)
    warmup_fraction: float = bounded(0.05, ge=0, le=1)
    grad_clip: float = bounded(1.0, gt=0, le=1e6)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    # Beta(alpha, alpha) mixing of two clips' audio, frames and labels (0 = off)
    mixup_alpha: float = bounded(0.0, ge=0, le=100)
    mixup_prob: float = bounded(0.5, ge=0, le=1)  # share of batches mixed when mixup_alpha > 0
    # data
    workers: int | str = 2  # loader workers per process, or "auto" (from the cores per rank)
    seed: int = bounded(0, ge=0, le=2**32 - 1)
    compile: bool = False
    bf16: bool = True  # autocast on GPU only
    log_every: int = bounded(50, ge=1, le=1_000_000_000)  # steps between host reads of the running loss
    train_split: str = "train"
    val_split: str = "test"
    folds: str | None = None  # k-fold: a `key,fold` CSV; validation = fold `fold`, training = the others
    fold: int = bounded(0, ge=0, le=1000)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        check_bounds(self, "train")
        defaults = ModelConfig()
        for key in DERIVED_MODEL_KEYS:
            if getattr(self.model, key) != getattr(defaults, key):
                raise ConfigError(
                    f"train.model.{key} is not a recipe key: training takes it from the shards "
                    f"and the loss; remove it from the recipe"
                )
        w = self.workers
        if isinstance(w, bool) or (w != "auto" if isinstance(w, str) else not 0 <= w <= 1024):
            raise ConfigError(f"train.workers: {w!r} is not allowed; allowed: an integer 0..1024 or 'auto'")
        if self.loss.reliability_weight > 0 and self.loss.aux_weight <= 0:
            raise ConfigError(
                "train.loss.reliability_weight > 0 needs aux_weight > 0: its targets come from "
                "the auxiliary heads, which only aux_weight trains"
            )
        if self.model.confidence and (self.loss.aux_weight <= 0 or not self.model.shared_head):
            raise ConfigError(
                "train.model.confidence needs aux_weight > 0 and shared_head: the scores read the "
                "classifier's confidence on each branch alone, which only the aux terms train"
            )


def build_model(
    cfg: TrainConfig,
    num_classes: int,
    sample_rate: int = 16_000,
    *,
    load_weights: bool = True,
    imagenet_url: str | None = None,
) -> FusionModel:
    """Only the modules this run trains: aux heads only when a loss term uses them (DDP
    requires every parameter to get a gradient). ``load_weights``, ``imagenet_url``: as
    ``FusionModel`` takes them."""
    model_cfg = replace(
        cfg.model, num_classes=num_classes, sample_rate=sample_rate, aux_heads=cfg.loss.aux_weight > 0
    )
    warn_random_init(model_cfg)
    return FusionModel(model_cfg, load_weights=load_weights, imagenet_url=imagenet_url)


def subsets(cfg: TrainConfig) -> tuple[Subset, Subset]:
    """(training, validation) sample selections: by split name, or by k-fold assignment."""
    if cfg.folds:
        folds = read_folds(cfg.folds)
        return Subset(folds=folds, fold=cfg.fold, holdout=False), Subset(
            folds=folds, fold=cfg.fold, holdout=True
        )
    return Subset(split=cfg.train_split), Subset(split=cfg.val_split)


def _lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    urls: list[str],
    cfg: TrainConfig,
    dist: DistEnv,
    subset: Subset,
    label_map: dict[str, int],
) -> dict:
    """Loss, top-1/top-5 and mean attention (overall and per class) on ``subset``. Each
    rank reads its share of the shards and the sums are all-reduced once at the end
    (no per-batch collective, so uneven shares cannot hang)."""
    assert isinstance(cfg.workers, int)  # build() made "auto" a count
    model.eval()
    tally = Tally(len(label_map), dist.device)
    for batch in data_loader(
        eval_stages(urls, cfg.batch_size, split=subset), cfg.workers, device=dist.device
    ):
        labelled = batch.target >= 0  # on the host, before the copy: no device sync
        if not labelled.any():
            continue
        batch = batch.to(dist.device)  # JPEGs decoded on the device, no augmentation
        with _autocast(cfg, dist):
            out = model(batch.waveform, batch.frames)
        rows = to_device(labelled.nonzero()[:, 0], dist.device)  # a host mask: no device sync
        tally.add(
            out.logits.index_select(0, rows),
            out.weights.index_select(0, rows),
            batch.target.index_select(0, rows),
        )
    sums = dist.all_reduce_sum(tally.sums)
    model.train()
    return tally.summary(sorted(label_map, key=label_map.__getitem__), sums)


def _autocast(cfg: TrainConfig, dist: DistEnv) -> contextlib.AbstractContextManager[object]:
    if not (cfg.bf16 and dist.device.type == "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


def run(
    cfg: TrainConfig,
    device: str = "auto",
    *,
    rank: int = 0,
    world: int = 1,
    local_rank: int = 0,
    imagenet_url: str | None = None,
) -> dict:
    """Train in this process, joining a process group of ``world`` (torchrun's ranks,
    which the job reads from the environment and passes in)."""
    dist = setup(device, rank=rank, world=world, local_rank=local_rank)
    try:
        return train(cfg, dist, imagenet_url=imagenet_url)
    finally:
        teardown()


@dataclass(kw_only=True)
class Run:
    """What an epoch needs: the data, the model (bare and as stepped: DDP/compiled),
    its optimizer and schedule, where the run stands, and the step count per epoch."""

    cfg: TrainConfig
    dist: DistEnv
    data: Dataset
    train_subset: Subset
    val_subset: Subset
    steps: int
    model: FusionModel
    net: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0
    step: int = 0
    batches: Any = None  # the persistent training DataLoader (one for all epochs), from :func:`stream`
    augment: BatchAugment | None = None
    # where the video encoder's starting weights came from (the checkpoint's ``video_init``)
    video_init: dict[str, str | None] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.data.label_map)

    @property
    def sample_rate(self) -> int:
        return self.data.manifest["config"]["clip"]["sample_rate"]


def seed_model_rng(seed: int, rank: int, epoch: int) -> None:
    """Model randomness (dropout, SpecAugment masks) per (seed, rank, epoch): ranks draw
    different masks, and a resumed run draws what the uninterrupted one drew. (Weights
    are initialised before this, from ``seed`` alone: every rank starts equal.)"""
    torch.manual_seed(seed_of(seed, rank, epoch))


class Diverged(RuntimeError):
    """The loss became NaN or infinite: training stops rather than save such a model."""


def train(cfg: TrainConfig, dist: DistEnv, *, imagenet_url: str | None = None) -> dict:
    """Train, evaluating and checkpointing every epoch; returns the last epoch's metrics.
    ``imagenet_url``: where ``video_weights: imagenet`` downloads from (None: torchvision's)."""
    out = cfg.out.rstrip("/")  # a local path or a URL (s3://…): see avfusion.storage
    storage.makedirs(out)
    r = build(cfg, dist, imagenet_url=imagenet_url)
    cfg = r.cfg  # loader workers resolved ("auto" → a count)
    restore(r, out)
    stream(r)
    r.net = wrap(r.model, cfg, dist)
    writer = ScalarLog(out) if dist.is_main else None
    metrics: dict = {}
    for epoch in range(r.epoch, cfg.epochs):
        seed_model_rng(cfg.seed, dist.rank, epoch)
        metrics = {
            "epoch": epoch,
            **train_epoch(r, epoch),
            **evaluate(r.model, r.data.urls, cfg, dist, r.val_subset, r.data.label_map),
        }
        if not math.isfinite(metrics["train_loss"]):  # all-reduced: every rank stops here
            raise Diverged(
                f"epoch {epoch}: the training loss is {metrics['train_loss']} (non-finite); stopped "
                f"before saving, so {storage.join(out, CHECKPOINT)} holds the last finite epoch, if any "
                "(try a lower --lr, or bf16: false in the recipe)"
            )
        if dist.is_main:
            log_epoch(out, metrics, writer)
            save_checkpoint(r, epoch, storage.join(out, CHECKPOINT))
        dist.barrier()
    _write_rank_state(out, dist, r.model, r.step)
    if dist.is_main:
        storage.write_json(storage.join(out, "label_map.json"), r.data.label_map)
        if writer is not None:
            writer.close()
        plot_curves(storage.join(out, "metrics.jsonl"), storage.join(out, "curves.png"))
    return metrics


def build(cfg: TrainConfig, dist: DistEnv, *, imagenet_url: str | None = None) -> Run:
    """Seeds, threads, data plan, model, optimizer and schedule of a fresh run (``net``
    is the bare model until :func:`wrap`). Only rank 0 of a fresh run reads the video
    encoder's starting weights (downloads ImageNet's): DDP copies rank 0's parameters to
    every rank when it wraps the model, and a resumed run takes them from its checkpoint."""
    torch.manual_seed(cfg.seed)
    cfg = replace(cfg, workers=loader_workers(cfg.workers, dist.device, _local_ranks(dist)))
    _cap_cpu_threads(cfg, dist)
    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = (
            True  # fixed clip shapes: the autotuned kernels are reused every step
        )
    data = Dataset.open(cfg.shards)
    train_subset, val_subset = subsets(cfg)
    n_train = train_subset.count(data)
    if n_train == 0:
        raise ValueError(f"{cfg.shards} has no training samples ({train_subset.describe()})")
    steps = cfg.steps_per_epoch or max(1, n_train // (cfg.batch_size * dist.world))
    total = steps * cfg.epochs
    resuming = storage.exists(storage.join(cfg.out.rstrip("/"), CHECKPOINT))
    model = build_model(
        cfg,
        len(data.label_map),
        data.manifest["config"]["clip"]["sample_rate"],
        load_weights=dist.is_main and not resuming,
        imagenet_url=imagenet_url,
    ).to(dist.device)
    if dist.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _lr_lambda(total, max(1, int(cfg.warmup_fraction * total)))
    )
    return Run(
        cfg=cfg,
        dist=dist,
        data=data,
        train_subset=train_subset,
        val_subset=val_subset,
        steps=steps,
        model=model,
        net=model,
        opt=opt,
        sched=sched,
        video_init=model.video_init.record() if model.video_init else None,
    )


def wrap(model: FusionModel, cfg: TrainConfig, dist: DistEnv) -> torch.nn.Module:
    """The module the steps call: DDP across ranks (every parameter the model owns gets
    a gradient, so no unused-parameter search), compiled with ``--compile``."""
    net = (
        DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
        if dist.world > 1
        else model
    )
    # torch.compile of a Module returns a Module (OptimizedModule); its stubs say Callable
    return cast(torch.nn.Module, torch.compile(net)) if cfg.compile else net


def restore(r: Run, out: str) -> None:
    """Continue from ``out/last.pt`` if there is one: weights, optimizer, schedule (the
    RNGs are seeded per epoch in :func:`train`)."""
    ckpt_path = storage.join(out, CHECKPOINT)
    if r.dist.is_main:
        for stale in storage.list_files(out, f".{CHECKPOINT}.*"):  # a local save cut short by a kill
            storage.remove(stale)
    if not storage.exists(ckpt_path):
        return
    ckpt = checkpoint.load(ckpt_path)
    r.model.load_state_dict(ckpt["model"])
    r.opt.load_state_dict(ckpt["optimizer"])
    r.sched.load_state_dict(ckpt["scheduler"])
    r.epoch, r.step = ckpt["epoch"] + 1, ckpt["step"]
    r.video_init = ckpt.get("video_init")  # the run's start, not this process's (absent: unknown)
    if r.dist.is_main:
        print(f"resumed from {ckpt_path} at epoch {r.epoch}, step {r.step}")
        _truncate_metrics(storage.join(out, "metrics.jsonl"), r.epoch)


def stream(r: Run) -> None:
    """One loader for the whole run, from the epoch it starts at: its workers persist
    across epochs and each iteration of it is the next epoch's stream."""
    cfg = r.cfg
    assert isinstance(cfg.workers, int)  # build() made "auto" a count
    per_worker = math.ceil(r.steps / max(1, cfg.workers))
    train_stream = TrainStream(
        r.data.urls,
        cfg.batch_size,
        split=r.train_subset,
        batches_per_epoch=per_worker,
        seed=cfg.seed,
        rank=r.dist.rank,
        world=r.dist.world,
        start_epoch=r.epoch,
    )
    r.batches = data_loader(train_stream, cfg.workers, device=r.dist.device, persistent=True)
    r.augment = BatchAugment(
        cfg.augment,
        num_classes=r.num_classes,
        seed=cfg.seed,
        rank=r.dist.rank,
        sample_rate=r.sample_rate,
        mixup_alpha=cfg.mixup_alpha,
        mixup_prob=cfg.mixup_prob,
    )


def prepare(batch: Batch, r: Run, epoch: int) -> tuple[Batch, torch.Tensor]:
    """A loader batch → (decoded, augmented batch on the device, soft targets): the one
    per-batch data step, seeded by (seed, rank, worker, epoch, step)."""
    assert r.augment is not None  # stream() built it
    return r.augment(batch, r.dist.device, epoch, r.step)


def train_epoch(r: Run, epoch: int) -> dict:
    """One epoch of steps; the running sums stay on the device and are read every
    ``log_every`` steps (progress bar) and once at the end (all-reduced over ranks)."""
    cfg, dist = r.cfg, r.dist
    r.model.train()
    t0, seen = time.time(), 0
    sums: dict[str, torch.Tensor] = {}
    with tqdm(
        total=r.steps, desc=f"epoch {epoch}", unit="step", disable=not dist.is_main, leave=False
    ) as bar:
        for i, batch in enumerate(islice(r.batches, r.steps)):
            batch, target = prepare(batch, r, epoch)
            loss, parts = train_step(r, batch, target)
            seen += accumulate(sums, loss, parts, len(batch.keys))
            bar.update(1)
            if (i + 1) % cfg.log_every == 0:
                bar.set_postfix(loss=f"{sums['loss'].item() / seen:.3f}")
    names = sorted(sums)
    n, *totals = dist.all_reduce_sum(
        torch.stack(
            [
                torch.tensor(float(seen), dtype=torch.float64, device=dist.device),
                *(sums[k].double() for k in names),
            ]
        )
        if sums
        else [0.0]
    )
    n = max(n, 1)
    means = dict(zip(names, (t / n for t in totals), strict=True))
    return {
        "step": r.step,
        "train_loss": means.get("loss", float("nan")),
        **{f"loss_{k}": v for k, v in means.items() if k != "loss"},
        "lr": r.sched.get_last_lr()[0],
        "samples_per_s": n / max(time.time() - t0, 1e-9),
    }


def accumulate(
    sums: dict[str, torch.Tensor], loss: torch.Tensor, parts: dict[str, torch.Tensor], n: int
) -> int:
    """Add a batch of ``n`` clips' loss and parts (× n) to the device-side sums; returns n."""
    for k, v in {"loss": loss, **parts}.items():
        sums[k] = sums[k] + v * n if k in sums else v * n
    return n


def train_step(r: Run, batch: Batch, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward, backward, clip, step: no host read, so the host can queue the next
    step while the device works. Returns the detached loss and its parts."""
    with _autocast(r.cfg, r.dist):
        output = r.net(batch.waveform, batch.frames)
        loss, parts = fusion_loss(output, target, r.cfg.loss, batch.dead, batch.blank)
    r.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(r.model.parameters(), r.cfg.grad_clip)
    r.opt.step()
    r.sched.step()
    r.step += 1
    return loss.detach(), parts


def log_epoch(out: str, metrics: dict, writer: ScalarLog | None) -> None:
    """The epoch's row in metrics.jsonl, its TensorBoard scalars, and one printed line."""
    storage.append_text(storage.join(out, "metrics.jsonl"), json.dumps(metrics) + "\n")
    if writer is not None:
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and k != "epoch":
                writer.add_scalar(k, v, metrics["epoch"])
        writer.flush()  # on a URL: the events reach the store every epoch, not only at the end
    print(
        " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in metrics.items()
            if not isinstance(v, dict)
        )
    )


def save_checkpoint(r: Run, epoch: int, path: str) -> None:
    """The model and everything a resume needs (keys: ``avfusion.checkpoint``)."""
    cuda = r.dist.device.type == "cuda"
    checkpoint.save(
        {
            "model": r.model.state_dict(),
            "optimizer": r.opt.state_dict(),
            "scheduler": r.sched.state_dict(),
            "epoch": epoch,
            "step": r.step,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(r.dist.device) if cuda else None,
            "model_config": asdict(r.model.cfg),
            "video_init": r.video_init,
            "train_config": _plain(r.cfg),
            "label_map": r.data.label_map,
            "clip": r.data.manifest["config"]["clip"],
            "avfusion_version": __version__,
        },
        path,
    )


def _local_ranks(dist: DistEnv) -> int:
    """Ranks sharing this host's cores (one per GPU here; every rank on a CPU host)."""
    return min(dist.world, torch.cuda.device_count()) if dist.device.type == "cuda" else dist.world


def _cap_cpu_threads(cfg: TrainConfig, dist: DistEnv) -> None:
    """On CPU, leave one core per data-loader worker: torch's default of one intra-op
    thread per core plus the workers oversubscribes the machine, and oversubscribed
    OpenMP threads spin-wait on each other, which costs more than the thread gains.
    Launchers that chose
    fewer (torchrun and Ray set one thread per process) are below the cap and untouched."""
    if dist.device.type != "cpu":
        return
    assert isinstance(cfg.workers, int)  # build() made "auto" a count
    cap = max(1, usable_cpus() // dist.world - cfg.workers)
    if torch.get_num_threads() > cap:
        torch.set_num_threads(cap)


def _truncate_metrics(path: str, start_epoch: int) -> None:
    """Drop rows of epochs the checkpoint does not cover (a crash between logging an
    epoch and checkpointing it), so a resumed run never logs an epoch twice."""
    if not storage.exists(path):
        return
    rows = [line for line in storage.read_text(path).splitlines() if line.strip()]
    kept = [line for line in rows if json.loads(line)["epoch"] < start_epoch]
    if len(kept) != len(rows):
        storage.write_text(path, "".join(line + "\n" for line in kept))


def _write_rank_state(out: str, dist: DistEnv, model: torch.nn.Module, step: int) -> None:
    """Each rank records its step count and a parameter checksum: after DDP they must
    agree, and a mismatch is how a desynchronised rank shows itself."""
    checksum = sum(p.detach().double().abs().sum().item() for p in model.parameters())
    storage.write_json(
        storage.join(out, "ranks", f"rank{dist.rank}.json"),
        {"rank": dist.rank, "world": dist.world, "step": step, "param_checksum": checksum},
    )


def _plain(cfg: TrainConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg)))


class ScalarLog:
    """TensorBoard scalars in ``out/tb``, written synchronously and flushed every epoch.

    tensorboardX's SummaryWriter hands events to a thread and its ``flush()`` does not wait
    for that queue, so an epoch's "flushed" scalars could still be in memory when a job is
    killed or the folder is uploaded (seen: the uploaded file held only its header). Its
    record writer is used directly instead. For a URL the events file is written in a local
    temp folder and uploaded whole at each flush (TensorBoard's writers cannot append to an
    object store); the temp folder goes with the log, or at exit if training raised first."""

    def __init__(self, out: str):
        from tensorboardX.event_file_writer import EventsWriter

        self.url = storage.join(out, "tb")
        self.remote = not storage.is_local(self.url)
        self.local = tempfile.mkdtemp(prefix="avf-tb-") if self.remote else storage.local_path(self.url)
        os.makedirs(self.local, exist_ok=True)
        self.events = EventsWriter(os.path.join(self.local, "events"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.local, True) if self.remote else None

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar

        self.events.write_event(Event(wall_time=time.time(), step=step, summary=scalar(tag, value)))

    def flush(self) -> None:
        self.events.flush()
        if self.remote:
            storage.upload_tree(self.local, self.url)

    def close(self) -> None:
        self.flush()
        self.events.close()
        if self._cleanup is not None:
            self._cleanup()


def plot_curves(metrics_path: str, png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in storage.read_text(str(metrics_path)).splitlines() if line.strip()]
    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r["train_loss"] for r in rows], label="train")
    axes[0].plot(epochs, [r.get("val_loss", float("nan")) for r in rows], label="val")
    axes[0].set_title("loss")
    axes[1].plot(epochs, [r.get("val_top1", float("nan")) for r in rows], label="top-1")
    axes[1].plot(epochs, [r.get("val_top5", float("nan")) for r in rows], label="top-5")
    axes[1].set_title("validation accuracy")
    axes[2].plot(epochs, [r.get("w_audio", float("nan")) for r in rows], label="audio")
    axes[2].plot(epochs, [r.get("w_video", float("nan")) for r in rows], label="video")
    axes[2].set_title("mean attention")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with storage.atomic_file(str(png)) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
