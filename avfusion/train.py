"""One training loop for every launch path (single process, torchrun DDP, Ray Train).

Reproducible by construction: the data stream is seeded by (seed, rank, loader worker,
epoch), each batch's augmentation by (seed, rank, worker, epoch, step), and checkpoints
carry the torch RNG state, so ``--resume`` after a crash continues to the same result
as an uninterrupted run (on CPU, bit for bit).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import asdict, dataclass, field, replace
from itertools import islice
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from avfusion import __version__, storage
from avfusion.augment import BatchAugment
from avfusion.corruptions import AugmentConfig
from avfusion.distributed import DistEnv
from avfusion.model import FusionModel, LossConfig, ModelConfig, fusion_loss, warn_random_init
from shards.loader import Dataset, Subset, TrainStream, data_loader, eval_stages, loader_workers, read_folds

CHECKPOINT = "last.pt"


@dataclass(frozen=True)
class TrainConfig:
    shards: str
    out: str
    modalities: str = "both"
    epochs: int = 10
    batch_size: int = 16
    steps_per_epoch: int | None = None  # default: train samples / (batch × ranks), at least 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    # model
    embed_dim: int = 256
    audio_width: int = 64
    audio_frontend: str = "gabor"  # gabor | conv (ablation: the free strided conv)
    audio_filters: int = 64
    spec_augment: bool = True
    video_weights: str = "none"
    dropout: float = 0.2
    # loss
    aux_weight: float = 0.3
    label_smoothing: float = 0.0
    reliability_weight: float = 0.0  # attention reliability term (0 = off)
    reliability_sharpness: float = 2.0  # γ of its target c_a^γ / (c_a^γ + c_v^γ)
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing of two clips' audio, frames and labels (0 = off)
    mixup_prob: float = 0.5  # share of batches mixed when mixup_alpha > 0
    # data
    workers: int | str = 2  # loader workers per process, or "auto" (from the cores per rank)
    seed: int = 0
    compile: bool = False
    bf16: bool = True  # autocast on GPU only
    train_split: str = "train"
    val_split: str = "test"
    folds: str | None = None  # k-fold: a `key,fold` CSV; validation = fold `fold`, training = the others
    fold: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def loss(self) -> LossConfig:
        return LossConfig(self.aux_weight, self.label_smoothing, self.reliability_weight, self.reliability_sharpness)


def build_model(cfg: TrainConfig, num_classes: int, sample_rate: int = 16_000) -> FusionModel:
    model_cfg = ModelConfig(num_classes=num_classes, modalities=cfg.modalities, embed_dim=cfg.embed_dim,
                            audio_width=cfg.audio_width, audio_frontend=cfg.audio_frontend,
                            audio_filters=cfg.audio_filters, spec_augment=cfg.spec_augment,
                            sample_rate=sample_rate, video_weights=cfg.video_weights, dropout=cfg.dropout)
    warn_random_init(model_cfg)
    return FusionModel(model_cfg)


def subsets(cfg: TrainConfig) -> tuple[Subset, Subset]:
    """(training, validation) sample selections: by split name, or by k-fold assignment."""
    if cfg.folds:
        folds = read_folds(cfg.folds)
        return Subset(folds=folds, fold=cfg.fold, holdout=False), Subset(folds=folds, fold=cfg.fold, holdout=True)
    return Subset(split=cfg.train_split), Subset(split=cfg.val_split)


def _lr_lambda(total: int, warmup: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def save_atomic(obj, path: str) -> None:
    """A checkpoint appears whole or not at all, locally or on an object store."""
    storage.save_torch(obj, str(path))


def load_checkpoint(path: str | Path) -> dict:
    return storage.load_torch(str(path))


def model_from_checkpoint(path: str | Path) -> tuple[FusionModel, dict]:
    """The model and its checkpoint dict (label map, config) for evaluate/label/predict."""
    ckpt = load_checkpoint(path)
    model = FusionModel(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


@torch.no_grad()
def evaluate(model, urls, cfg: TrainConfig, dist: DistEnv, subset: Subset, label_map: dict[str, int]) -> dict:
    """Loss, top-1/top-5 and mean attention (overall and per class) on ``subset``. Each
    rank reads its share of the shards and the sums are all-reduced once at the end
    (no per-batch collective, so uneven shares cannot hang)."""
    model.eval()
    c = len(label_map)
    sums = torch.zeros(4 + 3 * c, dtype=torch.float64)  # n, loss, top1, top5 | per class: n, w_a, w_v
    for batch in data_loader(eval_stages(urls, cfg.batch_size, split=subset), cfg.workers, device=dist.device):
        batch = batch.to(dist.device)  # JPEGs decoded on the device, no augmentation
        labelled = batch.target >= 0
        if not labelled.any():
            continue
        with _autocast(cfg, dist):
            out = model(batch.waveform, batch.frames)
        logits, target = out.logits.float()[labelled], batch.target[labelled]
        weights = out.weights.float()[labelled].cpu().double()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        sums[0] += len(target)
        sums[1] += torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
        sums[2] += (top5[:, 0] == target).sum().item()
        sums[3] += (top5 == target[:, None]).any(dim=1).sum().item()
        t = target.cpu()
        sums[4:4 + c] += torch.bincount(t, minlength=c).double()
        sums[4 + c:4 + 2 * c] += torch.zeros(c, dtype=torch.float64).index_add_(0, t, weights[:, 0])
        sums[4 + 2 * c:] += torch.zeros(c, dtype=torch.float64).index_add_(0, t, weights[:, 1])
    sums = torch.tensor(dist.all_reduce_sum(sums.tolist()), dtype=torch.float64)
    model.train()
    n = sums[0].item()
    if n == 0:
        return {"val_n": 0}
    per_n, per_a = sums[4:4 + c], sums[4 + c:4 + 2 * c]
    names = sorted(label_map, key=label_map.get)
    return {"val_n": int(n), "val_loss": sums[1].item() / n, "val_top1": sums[2].item() / n,
            "val_top5": sums[3].item() / n, "w_audio": per_a.sum().item() / n,
            "w_video": sums[4 + 2 * c:].sum().item() / n,
            "w_audio_by_class": {names[i]: per_a[i].item() / per_n[i].item() for i in range(c) if per_n[i] > 0}}


def _autocast(cfg: TrainConfig, dist: DistEnv):
    enabled = cfg.bf16 and dist.device.type == "cuda"
    return torch.autocast(device_type=dist.device.type, dtype=torch.bfloat16, enabled=enabled)


def train(cfg: TrainConfig, dist: DistEnv) -> dict:
    """Train, evaluating and checkpointing every epoch; returns the last epoch's metrics."""
    out = cfg.out.rstrip("/")  # a local path or a URL (s3://…): see avfusion.storage
    storage.makedirs(out)
    torch.manual_seed(cfg.seed)
    cfg = replace(cfg, workers=loader_workers(cfg.workers, dist.device, _local_ranks(dist)))
    _cap_cpu_threads(cfg, dist)
    data = Dataset.open(cfg.shards)
    train_subset, val_subset = subsets(cfg)
    n_train = train_subset.count(data)
    if n_train == 0:
        raise ValueError(f"{cfg.shards} has no training samples ({train_subset.describe()})")
    steps = cfg.steps_per_epoch or max(1, n_train // (cfg.batch_size * dist.world))
    total = steps * cfg.epochs
    num_classes, sample_rate = len(data.label_map), data.manifest["config"]["clip"]["sample_rate"]
    model = build_model(cfg, num_classes, sample_rate).to(dist.device)
    if dist.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total, max(1, int(cfg.warmup_fraction * total))))
    start_epoch, step = 0, 0
    ckpt_path = storage.join(out, CHECKPOINT)
    if dist.is_main:
        for stale in storage.list_files(out, f".{CHECKPOINT}.*"):  # a local save cut short by a kill
            storage.remove(stale)
    if storage.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, step = ckpt["epoch"] + 1, ckpt["step"]
        torch.set_rng_state(ckpt["rng"])
        if dist.is_main:
            print(f"resumed from {ckpt_path} at epoch {start_epoch}, step {step}")
            _truncate_metrics(storage.join(out, "metrics.jsonl"), start_epoch)
    net = DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None) if dist.world > 1 else model
    if cfg.compile:
        net = torch.compile(net)
    per_worker = math.ceil(steps / max(1, cfg.workers))
    stream = TrainStream(data.urls, cfg.batch_size, split=train_subset, batches_per_epoch=per_worker, seed=cfg.seed,
                         rank=dist.rank, start_epoch=start_epoch)
    batches = data_loader(stream, cfg.workers, device=dist.device, persistent=True)  # one loader for all epochs
    augment = BatchAugment(cfg.augment, num_classes=num_classes, seed=cfg.seed, rank=dist.rank,
                           sample_rate=sample_rate, mixup_alpha=cfg.mixup_alpha, mixup_prob=cfg.mixup_prob)
    metrics_path = storage.join(out, "metrics.jsonl")
    writer = ScalarLog(out) if dist.is_main else None
    metrics: dict = {}
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0, seen, loss_sum, part_sums = time.time(), 0, 0.0, {}
        with tqdm(total=steps, desc=f"epoch {epoch}", unit="step", disable=not dist.is_main, leave=False) as bar:
            for batch in islice(batches, steps):
                batch, target = augment(batch, dist.device, epoch, step)  # decode + augment on the device
                with _autocast(cfg, dist):
                    output = net(batch.waveform, batch.frames)
                    loss, parts = fusion_loss(output, target, cfg.loss)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                step += 1
                seen += len(batch.keys)
                loss_sum += loss.item() * len(batch.keys)
                bar.update(1)
                for k, v in parts.items():
                    part_sums[k] = part_sums.get(k, 0.0) + v * len(batch.keys)
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        seconds = time.time() - t0
        part_names = sorted(part_sums)
        n, loss_total, *part_totals = dist.all_reduce_sum([seen, loss_sum, *(part_sums[k] for k in part_names)])
        metrics = {"epoch": epoch, "step": step, "train_loss": loss_total / max(n, 1),
                   **{f"loss_{k}": v / max(n, 1) for k, v in zip(part_names, part_totals)},
                   "lr": sched.get_last_lr()[0], "samples_per_s": n / max(seconds, 1e-9),
                   **evaluate(model, data.urls, cfg, dist, val_subset, data.label_map)}
        if dist.is_main:
            storage.append_text(metrics_path, json.dumps(metrics) + "\n")
            for k, v in metrics.items():
                if writer is not None and isinstance(v, (int, float)) and k != "epoch":
                    writer.add_scalar(k, v, epoch)
            if writer is not None:
                writer.flush()  # on a URL: the events reach the store every epoch, not only at the end
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                           if not isinstance(v, dict)))
            save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "epoch": epoch, "step": step, "rng": torch.get_rng_state(),
                         "model_config": asdict(model.cfg), "train_config": _plain(cfg),
                         "label_map": data.label_map, "clip": data.manifest["config"]["clip"],
                         "version": __version__}, ckpt_path)
        dist.barrier()
    _write_rank_state(out, dist, model, step)
    if dist.is_main:
        storage.write_json(storage.join(out, "label_map.json"), data.label_map)
        if writer is not None:
            writer.close()
        plot_curves(metrics_path, storage.join(out, "curves.png"))
    return metrics


def _local_ranks(dist: DistEnv) -> int:
    """Ranks sharing this host's cores (one per GPU here; every rank on a CPU host)."""
    return min(dist.world, torch.cuda.device_count()) if dist.device.type == "cuda" else dist.world


def _cap_cpu_threads(cfg: TrainConfig, dist: DistEnv) -> None:
    """On CPU, leave one core per data-loader worker: torch's default of one intra-op
    thread per core plus the workers oversubscribes the machine, and oversubscribed
    OpenMP threads wait on each other (on a busy 2-core machine a fused step took
    several times longer with 2 threads + 1 worker than with 1 + 1). Launchers that chose
    fewer (torchrun and Ray set one thread per process) are below the cap and untouched."""
    if dist.device.type != "cpu":
        return
    cap = max(1, len(os.sched_getaffinity(0)) // dist.world - cfg.workers)
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
    storage.write_json(storage.join(out, "ranks", f"rank{dist.rank}.json"),
                       {"rank": dist.rank, "world": dist.world, "step": step, "param_checksum": checksum})


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
