"""The training/evaluation input pipeline over shards, as an explicit list of stages.

    shard list → (resample) → node split → worker split → tar → split filter → shuffle
    → decode → augment → batch

For training under DDP the shard list is *resampled* (each rank and worker draws
shards with its own deterministic seed) and the epoch is cut to a fixed number of
batches with ``with_epoch``, so every rank runs exactly the same number of steps
whatever the shard sizes: an uneven rank would hang the gradient all-reduce.
Evaluation reads each shard once (``split_by_node``), with no resampling.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from avfusion import storage
from shards.manifest import MANIFEST, STATS_SUFFIX
from shards.reader import decode_sample


@dataclass
class Batch:
    waveform: torch.Tensor  # (B, N) float32
    frames: torch.Tensor  # (B, T, S, S, 3) uint8
    target: torch.Tensor  # (B,) int64, -1 when unlabelled
    keys: list[str]

    def to(self, device, non_blocking: bool = True) -> Batch:
        return Batch(self.waveform.to(device, non_blocking=non_blocking),
                     self.frames.to(device, non_blocking=non_blocking),
                     self.target.to(device, non_blocking=non_blocking), self.keys)


@dataclass(frozen=True)
class Dataset:
    """A shard folder: its tar URLs and manifest (label map, clip spec, counts)."""

    urls: list[str]
    manifest: dict
    root: str = ""

    @classmethod
    def open(cls, root_url: str) -> Dataset:
        base = str(root_url).rstrip("/")
        manifest = storage.read_json(storage.join(base, MANIFEST))
        return cls([storage.join(base, s["tar"]) for s in manifest["shards"] if s["count"]], manifest, base)

    @property
    def label_map(self) -> dict[str, int]:
        return self.manifest["label_map"]

    def count(self, split: str | None) -> int:
        if split is None:
            return self.manifest["num_samples"]
        return self.manifest["by_split"].get(split, 0)

    def keys(self) -> list[str] | None:
        """Every sample's clip key, from the shards' stats files (None if unreadable)."""
        keys: list[str] = []
        for shard in self.manifest["shards"]:
            try:
                keys += storage.read_json(storage.join(self.root, shard["tar"][:-len(".tar")] + STATS_SUFFIX))["keys"]
            except (OSError, KeyError, ValueError):
                return None
        return keys


@dataclass(frozen=True)
class Subset:
    """Which samples a pipeline keeps: those of one split (the ``split`` field of each
    sample's metadata; None keeps all), or, for k-fold cross-validation, the samples
    whose clip is in fold ``fold`` (``holdout=True``, validation) or in any other fold
    (training). Fold maps name clips by key (``avf_dog_01_000000``) or by id
    (``avf_dog_01``); a clip missing from the map is in no fold and never used."""

    split: str | None = None
    folds: Mapping[str, int] | None = None
    fold: int = 0
    holdout: bool = False

    def fold_of(self, key: str) -> int | None:
        assert self.folds is not None
        if key in self.folds:
            return self.folds[key]
        stem, _, start = key.rpartition("_")
        return self.folds.get(stem) if start.isdigit() else None

    def keeps(self, key: str, split: str | None) -> bool:
        if self.folds is None:
            return self.split is None or split == self.split
        f = self.fold_of(key)
        return f is not None and (f == self.fold) == self.holdout

    def __call__(self, sample: dict) -> bool:
        meta = json.loads(sample["json"])
        return self.keeps(meta.get("key", sample["__key__"]), meta.get("split"))

    def count(self, data: Dataset) -> int:
        """Samples in ``data`` this subset keeps (from the manifest, without reading tars)."""
        if self.folds is None:
            return data.count(self.split)
        keys = data.keys()
        if keys is None:  # manifests without keys: count the fold map itself
            return sum((f == self.fold) == self.holdout for f in self.folds.values())
        return sum(self.keeps(k, None) for k in keys)

    def describe(self) -> str:
        if self.folds is None:
            return f"split {self.split!r}"
        return f"{'fold' if self.holdout else 'all folds but'} {self.fold} of {len(set(self.folds.values()))}"


def read_folds(url: str) -> dict[str, int]:
    """A k-fold assignment: CSV rows ``clip,fold`` (no header; clip = key or id)."""
    import csv
    import io

    rows = [r for r in csv.reader(io.StringIO(storage.read_text(url))) if r and not r[0].startswith("#")]
    try:
        return {r[0].strip(): int(r[1]) for r in rows}
    except (IndexError, ValueError) as exc:
        raise ValueError(f"{url}: folds file rows must be `clip,fold`: {exc}") from exc


def _split_is(split: str | Subset | None) -> Callable[[dict], bool]:
    return split if isinstance(split, Subset) else Subset(split=split)


def decode(sample: dict) -> dict:
    d = decode_sample(sample)
    return {"key": d.key, "waveform": d.waveform, "frames": d.frames, "target": d.class_index}


def collate(samples: list[dict]) -> Batch:
    return Batch(torch.from_numpy(np.stack([s["waveform"] for s in samples])),
                 torch.from_numpy(np.stack([s["frames"] for s in samples])),
                 torch.tensor([s["target"] for s in samples], dtype=torch.int64),
                 [s["key"] for s in samples])


def pipeline(urls: list[str], batch_size: int, *, split: str | Subset | None, train: bool, seed: int = 0,
             shuffle_buffer: int = 256, augment: Callable[[dict], dict] | None = None,
             batches_per_epoch: int | None = None, collation_fn: Callable = collate) -> wds.DataPipeline:
    """The stage list. ``train`` resamples shards and needs ``batches_per_epoch`` (per
    data-loader worker: the caller divides by workers and ranks)."""
    stages: list = []
    if train:
        stages += [wds.ResampledShards(urls, seed=seed, deterministic=True)]
    else:
        stages += [wds.SimpleShardList(urls), wds.split_by_node]
    stages += [
        wds.split_by_worker,
        open_shards,
        _expand_tars,
        wds.select(_split_is(split)),
    ]
    if train and shuffle_buffer > 1:
        stages += [wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 64), rng=_Rng(seed))]
    stages += [wds.map(decode)]
    if augment is not None:
        stages += [wds.map(augment)]
    stages += [wds.batched(batch_size, collation_fn=collation_fn, partial=not train)]
    ds = wds.DataPipeline(*stages)
    if train:
        if not batches_per_epoch:
            raise ValueError("training pipelines need batches_per_epoch (resampled shards never end)")
        ds = ds.with_epoch(batches_per_epoch)
    return ds


class ShardReadError(RuntimeError):
    """A shard could not be read after retries: the job stops and names it."""

    def brief(self) -> str:
        """The one line naming the shard. A DataLoader worker's error is re-raised in the
        main process with the worker's whole traceback as its message; keep its last line."""
        lines = str(self).strip().splitlines() or [""]
        tag = f"{type(self).__module__}.{type(self).__name__}: "
        return next((line[len(tag):] for line in reversed(lines) if line.startswith(tag)), lines[-1])


def _check_tar(url: str, data: bytes) -> None:
    """A shard that arrives whole but is not a whole tar (cut short, overwritten) stops
    the job naming it, before any of its samples is used: walking the member headers
    costs nothing beside decoding, and tarfile's own error names only a BytesIO."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if member.offset_data + member.size > len(data):
                    raise tarfile.ReadError(f"member {member.name} runs past the end")
    except tarfile.TarError as exc:
        raise ShardReadError(f"shard {url} is not a readable tar ({len(data)} bytes): {exc}") from exc


def open_shards(src, attempts: int = 4):
    """WebDataset stage: each shard URL → its bytes, through ``avfusion.storage`` (local,
    ``s3://``, ``gs://``, ``http(s)://``; webdataset's own opener knows no ``s3``).

    The whole shard is read with retries before any sample is yielded, so a retry never
    repeats samples; after the last attempt the job stops with an error naming the
    shard. (``warn_and_continue`` would skip it silently, and with resampled shards a
    shard that never opens makes an epoch that never ends.)"""
    for sample in src:
        url = sample["url"]
        try:
            data = storage.read_bytes_retry(url, attempts)
        except OSError as exc:
            raise ShardReadError(f"shard {url} cannot be read: {exc}") from exc
        _check_tar(url, data)
        yield {"url": url, "__url__": url, "stream": io.BytesIO(data)}


def _expand_tars(src):
    """Tar members → samples; a corrupt tar raises (webdataset adds the shard URL)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    return group_by_keys(tar_file_expander(src))


class _Rng:
    """A ``random.Random`` whose seed includes the data-loader worker id, so workers
    shuffle differently but reproducibly."""

    def __new__(cls, seed: int):
        import random

        info = torch.utils.data.get_worker_info()
        return random.Random(seed * 1000 + (info.id if info else 0))


def loader(ds: wds.DataPipeline, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=False,
                                       worker_init_fn=_worker_init if workers else None)


def _worker_init(_: int) -> None:
    # One thread per loader worker: N workers × all-cores would oversubscribe the CPUs.
    torch.set_num_threads(1)


def shard_urls(root: str | Path) -> list[str]:
    return Dataset.open(str(root)).urls
