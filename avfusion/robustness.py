"""Robustness evaluation: accuracy and attention of a model under each condition.

A condition is a list of (corruption, severity); the empty list is clean input. Each
clip is decoded once and corrupted per condition with a generator seeded by
(seed, condition, clip key), so results do not depend on batching or order and the
same clip is compared across conditions. Unimodal baselines are evaluated on the
same corrupted inputs beside the fused model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from avfusion import storage
from avfusion.corruptions import CORRUPTIONS, apply
from avfusion.metrics import topk_hits
from avfusion.model import FusionOutput, attention_agrees

PAIRS = (("muted_audio", "gaussian_blur"), ("audio_gaussian_noise", "video_gaussian_noise"),
         ("traffic_noise", "fog"))


@dataclass(frozen=True)
class Condition:
    corruptions: tuple[tuple[str, int], ...] = ()

    @property
    def name(self) -> str:
        if not self.corruptions:
            return "normal"
        return "+".join(n if not CORRUPTIONS[n].graded else f"{n}@{s}" for n, s in self.corruptions)

    @classmethod
    def parse(cls, text: str) -> Condition:
        """``normal``, ``muted_audio``, ``gaussian_blur@3``, ``muted_audio+fog@2``."""
        if text == "normal":
            return cls()
        parts = []
        for item in text.split("+"):
            name, _, sev = item.partition("@")
            if name not in CORRUPTIONS:
                raise ValueError(f"unknown corruption {name!r}; known: {sorted(CORRUPTIONS)}")
            parts.append((name, int(sev) if sev else 3))
        return cls(tuple(parts))


def conditions(suite: str) -> list[Condition]:
    """``default``: normal, missing modalities, everything at severity 3, three pairs;
    ``full``: the same with every graded corruption at severities 1–5."""
    severities = range(1, 6) if suite == "full" else (3,)
    out = [Condition()]
    out += [Condition(((n, 1),)) for n, c in CORRUPTIONS.items() if not c.graded]
    out += [Condition(((n, s),)) for n, c in CORRUPTIONS.items() if c.graded for s in severities]
    out += [Condition(((a, 3), (b, 3))) for a, b in PAIRS]
    if suite not in ("default", "full"):
        raise ValueError(f"suite must be default or full, got {suite!r}")
    return out


def corrupt(sample: dict, condition: Condition, seed: int) -> dict:
    digest = hashlib.sha1(f"{seed}|{condition.name}|{sample['key']}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    for name, severity in condition.corruptions:
        sample = apply(name, sample, severity, rng)
    return sample


@dataclass
class Tally:
    """Running accuracy and, for the fused model, per-clip attention weights (both
    measured, so their per-clip sum is a check, not a definition) and agreement."""

    n: int = 0
    top1: int = 0
    top5: int = 0
    w_audio: list[float] = field(default_factory=list)
    w_video: list[float] = field(default_factory=list)
    agree: list[bool] = field(default_factory=list)

    def add(self, out, target: torch.Tensor, fused: bool) -> None:
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
                cpu = FusionOutput(logits, weights, out.audio_logits.float().cpu(), out.video_logits.float().cpu())
                self.agree += attention_agrees(cpu, target).tolist()

    def summary(self) -> dict:
        out = {"n": self.n, "top1": self.top1 / max(self.n, 1), "top5": self.top5 / max(self.n, 1)}
        if self.w_audio:
            wa, wv = np.asarray(self.w_audio), np.asarray(self.w_video)
            out.update(w_audio=float(wa.mean()), w_video=float(wv.mean()), w_audio_std=float(wa.std()),
                       max_weight_sum_error=float(np.abs(wa + wv - 1).max()),
                       agreement=float(np.mean(self.agree)) if self.agree else float("nan"))
        return out


def _as_numpy(sample: dict) -> dict:
    """The DataLoader's default_convert turns arrays into tensors; corruptions take numpy."""
    return {k: (v.numpy() if isinstance(v, torch.Tensor) and v.ndim else
                int(v) if isinstance(v, torch.Tensor) else v) for k, v in sample.items()}


@torch.no_grad()
def evaluate_conditions(models: dict[str, torch.nn.Module], batches, conds: list[Condition], seed: int = 0,
                        device: torch.device | str = "cpu", progress=None) -> dict[str, dict[str, dict]]:
    """``batches`` yields lists of decoded samples (key, waveform, frames, target).
    Returns {condition: {model name: summary}}; "fused" carries the attention.

    One path for every device: corruptions run on the host (numpy, seeded per clip),
    then each condition's batch and the models are on ``device``; the tallies read
    the outputs back."""
    device = torch.device(device)
    for model in models.values():
        model.to(device)
    tallies = {c.name: {m: Tally() for m in models} for c in conds}
    for samples in batches:
        samples = [_as_numpy(s) for s in samples if int(s["target"]) >= 0]
        if not samples:
            continue
        target = torch.tensor([s["target"] for s in samples])
        for cond in conds:
            corrupted = [corrupt(s, cond, seed) for s in samples]
            wave = torch.from_numpy(np.stack([s["waveform"] for s in corrupted])).to(device)
            frames = torch.from_numpy(np.stack([s["frames"] for s in corrupted])).to(device)
            for name, model in models.items():
                m = model.cfg.modalities
                out = model(wave if m != "video" else None, frames if m != "audio" else None)
                tallies[cond.name][name].add(out, target, fused=m == "both")
            if progress is not None:
                progress.update(len(samples))
    return {c: {m: t.summary() for m, t in by_model.items()} for c, by_model in tallies.items()}


# ----------------------------------------------------------------------------- inputs


def shard_batches(urls: list[str], split, batch_size: int, workers: int):
    """Lists of decoded samples from shards (``split``: a split name or a ``Subset``),
    in the order the shards hold them: the input of :func:`evaluate_conditions`."""
    from shards.loader import data_loader, eval_stages

    return data_loader(eval_stages(urls, batch_size, split=split, compact_frames=False, collation_fn=lambda xs: xs),
                       workers)


def folder_batches(folder: str, labels: str, clip, label_map: dict[str, int], batch_size: int, workers: int):
    """Lists of decoded samples from a folder of videos labelled by a VGGSound-format
    CSV (files whose label the model does not know are left out); ``workers`` threads
    decode. A file that does not decode is reported on stderr and skipped."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from avfusion.decode import DecodeLimits, decode_clip
    from avfusion.probe import MediaError
    from avfusion.sources import scan_folder

    tasks = [t for t in scan_folder(folder, labels)[0] if t.label in label_map]

    def load(task):
        try:
            with storage.local_copy(task.source) as local:  # s3://… clips are fetched for PyAV
                data = decode_clip(local, clip, task.start, DecodeLimits(threads=1))
        except MediaError as exc:
            print(f"skipping {task.source}: {exc}", file=sys.stderr)
            return None
        return {"key": task.key, "waveform": data.waveform, "frames": data.frames, "target": label_map[task.label]}

    with ThreadPoolExecutor(max(1, workers)) as pool:
        batch = []
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
    conditions: str | None = None  # comma-separated, instead of the suite
    out: str = "robustness"
    batch_size: int = 16
    seed: int = 0
    workers: int = 2
    device: str = "auto"


def load_models(cfg: EvalConfig) -> tuple[dict[str, torch.nn.Module], dict]:
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


def run(cfg: EvalConfig) -> dict[str, dict[str, dict]]:
    """Evaluate, write the report under ``cfg.out``, print the table; returns the
    results. Raises OSError/KeyError/ValueError on bad arguments before evaluating."""
    from tqdm import tqdm

    from avfusion.config import ClipSpec
    from avfusion.device import choose_device
    from shards.loader import Dataset

    device = choose_device(cfg.device)
    models, ckpt = load_models(cfg)
    conds = ([Condition.parse(c.strip()) for c in cfg.conditions.split(",")] if cfg.conditions
             else conditions(cfg.suite))
    if Condition() not in conds:  # clean input is the reference every comparison needs
        conds.insert(0, Condition())
    label_map = ckpt["label_map"]
    if cfg.shards:
        data = Dataset.open(cfg.shards)
        if data.label_map != label_map:
            raise ValueError("the shards' label map differs from the checkpoint's")
        total = data.count(cfg.split) * len(conds) or None
        batches = shard_batches(data.urls, cfg.split, cfg.batch_size, cfg.workers)
    else:
        total = None
        batches = folder_batches(cfg.folder, cfg.labels, ClipSpec(**ckpt["clip"]), label_map, cfg.batch_size,
                                 cfg.workers)
    with tqdm(total=total, desc="evaluate", unit="clip") as bar:
        results = evaluate_conditions(models, batches, conds, seed=cfg.seed, device=device, progress=bar)
    paths = write_report(results, cfg.out, {"checkpoint": cfg.checkpoint, "split": cfg.split, "seed": cfg.seed,
                                            "n_clips": results["normal"]["fused"]["n"], "models": list(models),
                                            "device": str(device), "label_map": label_map})
    print(markdown_table(results, 1 / len(label_map)))
    print("wrote " + ", ".join(str(p) for p in paths))
    return results


# ----------------------------------------------------------------------------- report

DESTROYS, HARMLESS = 0.25, 0.75  # share of a modality's evidence left: below, it is gone; above, it is intact


def verdict(left: float) -> str:
    """What a share of evidence left means: destroys, degrades or harmless."""
    return "destroys" if left < DESTROYS else "harmless" if left > HARMLESS else "degrades"


def evidence_left(results: dict[str, dict[str, dict]], chance: float) -> dict[str, tuple[float, str]]:
    """Which corruptions matter, measured: for each single-corruption condition, the
    share of its modality's class evidence it leaves, read off the unimodal baseline on
    that modality, ``(top1 - chance) / (top1 clean - chance)``, and a verdict: *destroys*
    (< 0.25), *degrades*, or *harmless* (> 0.75; e.g. blur sized for 224² frames on 64²
    ones). A condition is left out when its baseline is missing or was at chance on
    clean input (nothing to lose)."""
    out = {}
    for cond, by_model in results.items():
        if cond == "normal" or "+" in cond:
            continue
        baseline = f"{CORRUPTIONS[cond.split('@')[0]].modality}-only"
        if baseline not in by_model or results["normal"][baseline]["top1"] - chance < 0.05:
            continue
        left = (by_model[baseline]["top1"] - chance) / (results["normal"][baseline]["top1"] - chance)
        out[cond] = (left, verdict(left))
    return out


def markdown_table(results: dict[str, dict[str, dict]], chance: float | None = None) -> str:
    """One row per condition; with ``chance`` and a baseline on the corrupted modality,
    also the share of that modality's evidence the corruption leaves (:func:`evidence_left`)."""
    models = list(next(iter(results.values())))
    left = evidence_left(results, chance) if chance is not None else {}
    head = ["condition", "w_audio", "w_video", "agreement", *[f"top-1 {m}" for m in models], "top-5 fused",
            *(["evidence left (unimodal)"] if left else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cond, by_model in results.items():
        fused = by_model["fused"]
        cells = [cond, f"{fused.get('w_audio', float('nan')):.3f}", f"{fused.get('w_video', float('nan')):.3f}",
                 f"{fused.get('agreement', float('nan')):.3f}",
                 *[f"{by_model[m]['top1']:.3f}" for m in models], f"{fused['top5']:.3f}"]
        if left:
            cells.append(f"{left[cond][0]:.2f} {left[cond][1]}" if cond in left else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: dict, out: str | Path, meta: dict) -> list[str]:
    """robustness.json, robustness.md and the three PNGs (local or URL); returns the paths."""
    out = str(out)
    storage.makedirs(out)
    storage.write_text(storage.join(out, "robustness.json"), json.dumps({"meta": meta, "conditions": results},
                                                                        indent=1))
    storage.write_text(storage.join(out, "robustness.md"), f"# Robustness: {meta.get('checkpoint', '')}\n\n"
                       f"{meta.get('n_clips', 0)} clips, split `{meta.get('split')}`, "
                       f"seed {meta.get('seed')}.\n\n" + markdown_table(results, _chance(meta)))
    return [storage.join(out, "robustness.json"), storage.join(out, "robustness.md"), *plot(results, out)]


def _chance(meta: dict) -> float | None:
    return 1 / len(meta["label_map"]) if meta.get("label_map") else None


def plot(results: dict, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    singles = [c for c in results if "+" not in c and ("@" not in c or c.endswith("@3"))]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(singles)), 4))
    wa = [results[c]["fused"].get("w_audio", np.nan) for c in singles]
    x = np.arange(len(singles))
    ax.bar(x, wa, label="w_audio", color="#d95f02")
    ax.bar(x, [results[c]["fused"].get("w_video", np.nan) for c in singles], bottom=wa, label="w_video",
           color="#1b9e77")
    ax.axhline(results["normal"]["fused"].get("w_audio", np.nan), color="k", lw=0.8, ls="--", label="normal w_audio")
    ax.set_xticks(x, singles, rotation=70, ha="right", fontsize=8)
    ax.set_ylabel("mean attention")
    ax.set_title("Attention per condition (severity 3)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(storage.join(out, "attention_by_condition.png"))
    with storage.atomic_file(paths[-1]) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

    graded = sorted({c.split("@")[0] for c in results if "@" in c and "+" not in c})
    models = list(results["normal"])
    for what, fname in (("top1", "accuracy_vs_severity.png"), ("w_audio", "attention_vs_severity.png")):
        cols = 4
        rows = max(1, -(-len(graded) // cols))
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
        for ax, name in zip(axes.flat, graded):
            sev = [s for s in range(1, 6) if f"{name}@{s}" in results]
            for m in (models if what == "top1" else ["fused"]):
                ys = [results["normal"][m].get(what, np.nan)] + [results[f"{name}@{s}"][m].get(what, np.nan) for s in sev]
                ax.plot([0, *sev], ys, marker="o", label=m)
            ax.set_title(name, fontsize=9)
            ax.set_ylim(0, 1)
            ax.set_xticks(range(0, 6))
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(graded):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle("top-1 vs severity (0 = clean)" if what == "top1" else "w_audio vs severity (0 = clean)")
        fig.tight_layout()
        paths.append(storage.join(out, fname))
        with storage.atomic_file(paths[-1]) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
    return paths
