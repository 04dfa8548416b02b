"""The evaluation run: decoded batches in, per-condition accuracy and attention out.

Unimodal baselines are evaluated on the same corrupted inputs beside the fused model.
Inputs are shards (a split or a fold) or a folder of labelled videos; ``run`` is what
``avfusion evaluate`` calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from avfusion import storage
from avfusion.config import bounded, check_bounds
from avfusion.evaluation.conditions import NORMAL, Condition, conditions, corrupt
from avfusion.evaluation.report import Results, markdown_table, write_report
from avfusion.metrics import topk_hits
from avfusion.model import Features, FusionModel, FusionOutput, attention_agrees

if TYPE_CHECKING:
    from avfusion.config import ClipSpec
    from avfusion.loader import Subset


@dataclass
class ConditionTally:
    """One model under one condition: running accuracy and, for the fused model, per-clip
    attention weights (both measured, so their per-clip sum is a check, not a definition)
    and agreement. Host lists, unlike training's ``metrics.Tally`` (device sums for an
    all-reduce): the report needs the weights' spread and worst sum, not only means."""

    n: int = 0
    top1: int = 0
    top5: int = 0
    w_audio: list[float] = field(default_factory=list)
    w_video: list[float] = field(default_factory=list)
    agree: list[bool] = field(default_factory=list)
    # hits of the fused model's own heads (the classifier on one branch's embedding
    # alone): what each encoder learned inside the fused model, set against the
    # unimodal model trained alone (modality competition shows as a gap)
    audio_head_top1: int = 0
    video_head_top1: int = 0
    # how sure each own head is (its top probability, summed over clips): a head that a
    # corruption left wrong but sure is one no confidence-aware attention can see through
    audio_head_sure: float = 0.0
    video_head_sure: float = 0.0

    def add(self, out: FusionOutput, target: torch.Tensor, fused: bool) -> None:
        logits = out.logits.float().cpu()
        top1, top5 = topk_hits(logits, target).tolist()
        self.n += len(target)
        self.top1 += top1
        self.top5 += top5
        if fused:
            weights = out.weights.float().cpu()
            self.w_audio += weights[:, 0].tolist()
            self.w_video += weights[:, 1].tolist()
            if out.audio_logits is not None:  # a model trained without aux heads has no agreement
                assert out.video_logits is not None  # the aux heads come in pairs
                audio, video = out.audio_logits.float().cpu(), out.video_logits.float().cpu()
                self.agree += attention_agrees(FusionOutput(logits, weights, audio, video), target).tolist()
                self.audio_head_top1 += int(topk_hits(audio, target)[0])
                self.video_head_top1 += int(topk_hits(video, target)[0])
                self.audio_head_sure += float(torch.softmax(audio, dim=1).amax(dim=1).sum())
                self.video_head_sure += float(torch.softmax(video, dim=1).amax(dim=1).sum())

    def summary(self) -> dict[str, float]:
        n = max(self.n, 1)
        out: dict[str, float] = {"n": self.n, "top1": self.top1 / n, "top5": self.top5 / n}
        if self.w_audio:
            wa, wv = np.asarray(self.w_audio), np.asarray(self.w_video)
            out.update(
                w_audio=float(wa.mean()),
                w_video=float(wv.mean()),
                w_audio_std=float(wa.std()),
                max_weight_sum_error=float(np.abs(wa + wv - 1).max()),
                agreement=float(np.mean(self.agree)) if self.agree else float("nan"),
            )
            if self.agree:
                out.update(
                    audio_head_top1=self.audio_head_top1 / n,
                    video_head_top1=self.video_head_top1 / n,
                    audio_head_sure=self.audio_head_sure / n,
                    video_head_sure=self.video_head_sure / n,
                )
        return out


def as_numpy(sample: dict) -> dict:
    """The DataLoader's default_convert turns arrays into tensors; corruptions take numpy."""
    return {
        k: (
            v.numpy()
            if isinstance(v, torch.Tensor) and v.ndim
            else int(v)
            if isinstance(v, torch.Tensor)
            else v
        )
        for k, v in sample.items()
    }


@torch.no_grad()
def evaluate_conditions(
    models: Mapping[str, FusionModel],
    batches: Iterable[list[dict]],
    conds: list[Condition],
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Any = None,
    observe: Callable[[Condition, dict[str, tuple[Features, FusionOutput]], torch.Tensor], None]
    | None = None,
) -> Results:
    """``batches`` yields lists of decoded samples (key, waveform, frames, target);
    ``progress`` (a tqdm bar) is advanced by the clips evaluated; ``observe`` is handed,
    per condition and batch, each model's features and outputs and the batch's targets
    (``signals.SignalTally`` reads them there rather than running the models again).
    Returns {condition: {model name: summary}}; "fused" carries the attention.

    One path for every device: corruptions run on the host (numpy, seeded per clip),
    then each condition's batch and the models are on ``device``; the tallies read
    the outputs back."""
    device = torch.device(device)
    for model in models.values():
        model.to(device)
    tallies = {c: {m: ConditionTally() for m in models} for c in conds}
    for samples in batches:
        samples = [as_numpy(s) for s in samples if int(s["target"]) >= 0]
        if not samples:
            continue
        target = torch.tensor([s["target"] for s in samples])
        for cond in conds:
            corrupted = [corrupt(s, cond, seed) for s in samples]
            wave = torch.from_numpy(np.stack([s["waveform"] for s in corrupted])).to(device)
            frames = torch.from_numpy(np.stack([s["frames"] for s in corrupted])).to(device)
            outputs = {}
            for name, model in models.items():
                m = model.cfg.modalities
                features = model.forward_features(
                    wave if m != "video" else None, frames if m != "audio" else None
                )
                outputs[name] = (features, model.forward_head(*features))
                tallies[cond][name].add(outputs[name][1], target, fused=m == "both")
            if observe is not None:
                observe(cond, outputs, target)
            if progress is not None:
                progress.update(len(samples))
    return {c: {m: t.summary() for m, t in by_model.items()} for c, by_model in tallies.items()}


# ----------------------------------------------------------------------------- inputs


def shard_batches(
    urls: list[str], split: str | Subset | None, batch_size: int, workers: int
) -> torch.utils.data.DataLoader:
    """Lists of decoded samples from shards (``split``: a split name or a ``Subset``),
    in the order the shards hold them: the input of :func:`evaluate_conditions`."""
    from avfusion.loader import data_loader, eval_stages

    stages = eval_stages(urls, batch_size, split=split, compact_frames=False, collation_fn=lambda xs: xs)
    return data_loader(stages, workers)


def folder_batches(
    folder: str, labels: str | None, clip: ClipSpec, label_map: dict[str, int], batch_size: int, workers: int
) -> Iterator[list[dict]]:
    """Lists of decoded samples from a folder of videos labelled by a VGGSound-format
    CSV (files whose label the model does not know are left out); ``workers`` threads
    decode. A file that does not decode is reported on stderr and skipped."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from avfusion.decode import DecodeLimits, decode_clip
    from avfusion.probe import MediaError
    from avfusion.sources import ClipTask, scan_folder

    tasks = [t for t in scan_folder(folder, labels)[0] if t.label in label_map]

    def load(task: ClipTask) -> dict | None:
        try:
            with storage.local_copy(task.source) as local:  # s3://… clips are fetched for PyAV
                data = decode_clip(local, clip, task.start, DecodeLimits(threads=1))
        except MediaError as exc:
            print(f"skipping {task.source}: {exc}", file=sys.stderr)
            return None
        assert task.label is not None  # ``tasks`` holds only labels the model knows
        return {
            "key": task.key,
            "waveform": data.waveform,
            "frames": data.frames,
            "target": label_map[task.label],
        }

    with ThreadPoolExecutor(max(1, workers)) as pool:
        batch: list[dict] = []
        for sample in pool.map(load, tasks):
            if sample is not None:
                batch.append(sample)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch


# ----------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class EvalConfig:
    """One robustness evaluation (``avfusion evaluate``'s flags): the fused checkpoint,
    optional unimodal baselines, and either shards (``split``) or a labelled folder."""

    checkpoint: str
    shards: str | None = None
    folder: str | None = None
    labels: str | None = None
    split: str = "test"
    audio_baseline: str | None = None
    video_baseline: str | None = None
    suite: str = "default"
    conditions: tuple[Condition, ...] | None = None  # instead of the suite
    out: str = "robustness"
    batch_size: int = bounded(16, ge=1, le=65_536)
    seed: int = bounded(0, ge=0, le=2**32 - 1)
    workers: int = bounded(2, ge=0, le=1024)
    device: str = "auto"

    def __post_init__(self) -> None:
        check_bounds(self, "evaluate")


def load_models(cfg: EvalConfig) -> tuple[dict[str, FusionModel], dict]:
    """{"fused": model, "audio-only"/"video-only": baselines} and the fused checkpoint;
    ValueError when the first is not fused or a baseline has another label map."""
    from avfusion.checkpoint import model_from_checkpoint

    model, ckpt = model_from_checkpoint(cfg.checkpoint)
    if model.cfg.modalities != "both":
        raise ValueError("the first checkpoint must be a fused (both-modality) model")
    models = {"fused": model}
    for name, path in (("audio-only", cfg.audio_baseline), ("video-only", cfg.video_baseline)):
        if path:
            baseline, bckpt = model_from_checkpoint(path)
            if bckpt["label_map"] != ckpt["label_map"]:
                raise ValueError(f"{path} was trained on a different label map than {cfg.checkpoint}")
            models[name] = baseline
    return models, ckpt


def run(cfg: EvalConfig) -> Results:
    """Evaluate, write the report under ``cfg.out``, print the table; returns the
    results. Raises OSError/KeyError/ValueError on bad arguments before evaluating."""
    from tqdm import tqdm

    from avfusion.config import ClipSpec
    from avfusion.device import choose_device
    from avfusion.loader import Dataset

    models, ckpt = load_models(cfg)  # a checkpoint it cannot use is refused before anything is said
    device = choose_device(cfg.device, say=lambda line: print(line, flush=True))
    conds = list(cfg.conditions) if cfg.conditions else conditions(cfg.suite)
    if NORMAL not in conds:  # clean input is the reference every comparison needs
        conds.insert(0, NORMAL)
    label_map = ckpt["label_map"]
    batches: Iterable[list[dict]]
    if cfg.shards:
        data = Dataset.open(cfg.shards)
        if data.label_map != label_map:
            raise ValueError("the shards' label map differs from the checkpoint's")
        total = data.count(cfg.split) * len(conds) or None
        batches = shard_batches(data.urls, cfg.split, cfg.batch_size, cfg.workers)
    else:
        assert cfg.folder is not None  # an EvalConfig names shards or a folder
        total = None
        batches = folder_batches(
            cfg.folder, cfg.labels, ClipSpec(**ckpt["clip"]), label_map, cfg.batch_size, cfg.workers
        )
    with tqdm(total=total, desc="evaluate", unit="clip") as bar:
        results = evaluate_conditions(models, batches, conds, seed=cfg.seed, device=device, progress=bar)
    meta = {
        "checkpoint": cfg.checkpoint,
        "split": cfg.split,
        "seed": cfg.seed,
        "n_clips": results[NORMAL]["fused"]["n"],
        "models": list(models),
        "device": str(device),
        "label_map": label_map,
    }
    paths = write_report(results, cfg.out, meta)
    print(markdown_table(results, 1 / len(label_map)))
    print("wrote " + ", ".join(str(p) for p in paths))
    return results
