"""The training/evaluation input pipeline over shards, as explicit stage lists.

    training (``TrainStream``): dealt shards → tar → split filter → shuffle
        → compact decode (FLAC only) → batch
    evaluation (``eval_stages``): shard list → node split → worker split → tar
        → split filter → compact decode → batch

Batches leave the loader compact (16-bit PCM and JPEG bytes, pinned for a CUDA
device) and are decoded where they are used: ``Batch.to(device)`` decodes the whole
batch's JPEGs there in one call, and ``avfusion.augment`` augments the batch there.
Under DDP every rank runs the same number of steps (an endless stream of dealt
shards, a fixed number of batches per epoch); evaluation reads each shard once.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from itertools import islice
from typing import Any

import numpy as np
import torch
import webdataset as wds

from avfusion import shardstore, storage
from avfusion.cpus import usable_cpus
from avfusion.device import to_device
from avfusion.jpeg import decode as jpeg_decode
from shards.reader import decode_sample, frame_names


@dataclass
class Batch:
    """A batch as the loader ships it, compact, or as the model takes it, decoded.

    Compact (from the loader): ``waveform`` is 16-bit PCM (B, N) int16 and the frames
    are their JPEG bytes back to back in one uint8 buffer ``jpeg`` with ``jpeg_offsets``
    (B*T+1), clip-major; ``frames`` is None. That is 4-10x fewer bytes to pin and copy
    than decoded frames, and the decode happens where the batch goes: ``to(device)``
    decodes all the batch's JPEGs in one call on that device (``avfusion.jpeg``:
    nvJPEG on CUDA, libjpeg-turbo on the CPU). Decoded: ``waveform`` (B, N)
    float32 in [-1, 1], ``frames`` (B, T, S, S, 3) uint8. ``worker`` is the loader
    worker that built the batch (its augmentation seed)."""

    waveform: torch.Tensor
    frames: torch.Tensor | None
    target: torch.Tensor  # (B,) int64, -1 when unlabelled
    keys: list[str]
    jpeg: torch.Tensor | None = None
    jpeg_offsets: torch.Tensor | None = None
    worker: int = 0
    dead: torch.Tensor | None = None  # (B, 2) bool [audio, video]: streams training augmentation killed
    blank: torch.Tensor | None = None  # (B, 2) bool: of those, the muted and black ones (no signal)

    @property
    def n_frames(self) -> int:
        if self.frames is not None:
            return self.frames.shape[1]
        assert self.jpeg_offsets is not None  # a compact batch: frames are JPEGs
        return (len(self.jpeg_offsets) - 1) // max(1, len(self.keys))

    def pin_memory(self) -> Batch:
        """Page-locked copies, so ``to(device, non_blocking=True)`` really overlaps. The
        DataLoader's pin thread calls this (it pins only objects that have the method).
        Without an accelerator there is nothing to pin for: the batch is returned as is."""
        if not torch.cuda.is_available():
            return self

        def pin(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.pin_memory()

        return replace(
            self,
            waveform=self.waveform.pin_memory(),
            frames=pin(self.frames),
            target=self.target.pin_memory(),
            jpeg=pin(self.jpeg),
        )

    def to(
        self, device: torch.device | str, non_blocking: bool = True, frame_index: torch.Tensor | None = None
    ) -> Batch:
        """The decoded batch on ``device``: audio as float, JPEGs decoded there.
        ``frame_index`` (B, k) int64 on the CPU keeps only those frames of each clip,
        in that order, and only those are decoded (temporal crops decode k of T)."""
        device = torch.device(device)
        wave = self.waveform.to(device, non_blocking=non_blocking)
        if wave.dtype == torch.int16:
            wave = wave.float().mul_(1 / 32768)
        if self.frames is not None:
            frames = self.frames.to(device, non_blocking=non_blocking)
            if frame_index is not None:
                rows = torch.arange(len(frames), device=device)[:, None]
                frames = frames[rows, to_device(frame_index, device)]
        else:
            assert self.jpeg is not None and self.jpeg_offsets is not None  # compact: JPEGs, no frames
            frames = decode_frames(self.jpeg, self.jpeg_offsets, len(self.keys), device, frame_index)
        return Batch(
            wave, frames, self.target.to(device, non_blocking=non_blocking), self.keys, worker=self.worker
        )


def decode_frames(
    jpeg: torch.Tensor,
    offsets: torch.Tensor,
    clips: int,
    device: torch.device,
    frame_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """One batched decode (``avfusion.jpeg``: stream-safe on CUDA; inputs stay on the
    CPU, ``device`` is where they are decoded) → (B, k, H, W, 3) uint8, a channels-last
    view of a contiguous (B, k, 3, H, W) tensor (what the model's per-frame conv reads)."""
    o = offsets.tolist()  # a CPU tensor: no device sync
    t = (len(o) - 1) // max(1, clips)
    picks = (
        range(clips * t)
        if frame_index is None
        else [b * t + i for b, row in enumerate(frame_index.tolist()) for i in row]
    )
    frames = jpeg_decode([jpeg[o[i] : o[i + 1]] for i in picks], torch.device(device))
    return frames.view(clips, -1, *frames.shape[1:]).permute(0, 1, 3, 4, 2)


@dataclass(frozen=True)
class Dataset:
    """A shard folder: its tar URLs and manifest (label map, clip spec, counts)."""

    urls: list[str]
    manifest: dict
    root: str = ""

    @classmethod
    def open(cls, root_url: str) -> Dataset:
        base = str(root_url).rstrip("/")
        manifest = shardstore.read_manifest(base)
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
                keys += shardstore.read_stats(self.root, shard["tar"][: -len(".tar")]).keys
            except (OSError, KeyError, TypeError, ValueError):
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
    """Per-clip decode to numpy (PIL + soundfile): robustness evaluation corrupts
    decoded arrays clip by clip, and the per-clip reference augmentation uses it."""
    d = decode_sample(sample)
    return {"key": d.key, "waveform": d.waveform, "frames": d.frames, "target": d.class_index}


def compact(sample: dict) -> dict:
    """The training/evaluation sample as it crosses to the main process: 16-bit PCM
    (FLAC decode is the only decode done here) and the frames' JPEG bytes untouched."""
    import soundfile as sf

    wave, _ = sf.read(io.BytesIO(sample["flac"]), dtype="int16")
    return {
        "key": sample["__key__"],
        "waveform": wave,
        "jpegs": [sample[n] for n in frame_names(sample)],
        "target": int(sample["cls"]),
    }


def collate(samples: list[dict]) -> Batch:
    """Decoded samples (``decode``) → a decoded Batch."""
    return Batch(
        torch.from_numpy(np.stack([s["waveform"] for s in samples])),
        torch.from_numpy(np.stack([s["frames"] for s in samples])),
        torch.tensor([s["target"] for s in samples], dtype=torch.int64),
        [s["key"] for s in samples],
        worker=_worker_id(),
    )


def collate_compact(samples: list[dict]) -> Batch:
    """Compact samples → a compact Batch (one JPEG buffer; see ``Batch``)."""
    t = {len(s["jpegs"]) for s in samples}
    if len(t) != 1:
        raise ValueError(
            f"clips of one batch have different frame counts {sorted(t)}: {[s['key'] for s in samples]}"
        )
    jpegs = [j for s in samples for j in s["jpegs"]]
    offsets = np.zeros(len(jpegs) + 1, np.int64)
    np.cumsum([len(j) for j in jpegs], out=offsets[1:])
    return Batch(
        torch.from_numpy(np.stack([s["waveform"] for s in samples])),
        None,
        torch.tensor([s["target"] for s in samples], dtype=torch.int64),
        [s["key"] for s in samples],
        jpeg=torch.frombuffer(bytearray(b"".join(jpegs)), dtype=torch.uint8),
        jpeg_offsets=torch.from_numpy(offsets),
        worker=_worker_id(),
    )


def _worker_id() -> int:
    info = torch.utils.data.get_worker_info()
    return info.id if info else 0


def seed_of(*parts: int) -> int:
    """One 63-bit seed from several non-negative integers (seed, rank, worker, epoch…)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def _sample_stages(
    split: str | Subset | None,
    decode_fn: Callable[[dict], dict],
    augment: Callable[[dict], dict] | None,
    batch_size: int,
    partial: bool,
    collation_fn: Callable[[list[dict]], Any],
    shuffle: Callable | None = None,
) -> list[Callable]:
    stages: list[Callable] = [wds.split_by_worker, open_shards, _expand_tars, wds.select(_split_is(split))]
    if shuffle is not None:
        stages += [shuffle]
    stages += [wds.map(decode_fn)]
    if augment is not None:
        stages += [wds.map(augment)]
    return stages + [wds.batched(batch_size, collation_fn=collation_fn, partial=partial)]


def eval_stages(
    urls: list[str],
    batch_size: int,
    *,
    split: str | Subset | None,
    compact_frames: bool = True,
    collation_fn: Callable | None = None,
) -> wds.DataPipeline:
    """Every sample of ``split`` once: shards split by node and worker, no shuffle.
    Compact batches by default (decoded on the device by ``Batch.to``);
    ``compact_frames=False`` decodes per clip in the workers (robustness evaluation)."""
    fn, coll = (compact, collate_compact) if compact_frames else (decode, collate)
    return wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_node,
        *_sample_stages(split, fn, None, batch_size, True, collation_fn or coll),
    )


class TrainStream(torch.utils.data.IterableDataset):
    """The training stage list; one iteration is one epoch of ``batches_per_epoch``
    batches (per loader worker: the caller divides by workers and ranks).

        dealt shards → tar → split filter → shuffle → decode → (augment) → batch

    Shards are *dealt*, not drawn: each pass is a permutation of all shards (seeded by
    seed, epoch and pass, so every rank and worker sees the same one) dealt round-robin
    to the ``world × workers`` consumers, and a consumer that has read its hand starts
    the next pass. So an epoch reads every shard once before any twice, consumers never
    share a shard within a pass, the shuffle buffer (which fills completely before it
    yields) mixes the samples of one pass and empties at its end, and every rank still
    runs the same number of steps whatever the shard sizes (the stream never ends; the
    epoch is cut at ``batches_per_epoch``, so an uneven rank cannot hang the gradient
    all-reduce). (Drawing shards with replacement would leave about half the shards of
    a small set unread in each epoch, and shards written in label order would then skew
    the classes an epoch sees.)

    All randomness is drawn inside the worker, from generators seeded by (seed, rank,
    worker, epoch): workers and ranks read different streams, reproducibly. The epoch
    is ``start_epoch`` plus the number of times this copy of the stream has been
    iterated, so a persistent DataLoader (workers kept across epochs, each holding its
    own copy) still moves every worker to the next epoch's seed, and a resumed run
    passes the epoch it resumes at."""

    def __init__(
        self,
        urls: list[str],
        batch_size: int,
        *,
        split: str | Subset | None,
        batches_per_epoch: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        start_epoch: int = 0,
        shuffle_buffer: int = 256,
        compact_frames: bool = True,
        augment: Callable[[dict], dict] | None = None,
        collation_fn: Callable | None = None,
    ) -> None:
        if not batches_per_epoch:
            raise ValueError("training streams need batches_per_epoch (the dealt shards never end)")
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, world={world}), got {rank}")
        self.urls, self.batch_size, self.split = list(urls), batch_size, split
        self.batches = batches_per_epoch
        self.seed, self.rank, self.world, self.start_epoch = seed, rank, world, start_epoch
        self.shuffle_buffer = shuffle_buffer
        self.compact_frames, self.augment, self.collation_fn = compact_frames, augment, collation_fn
        self._iterations = 0

    def __iter__(self) -> Iterator[Any]:
        epoch = self.start_epoch + self._iterations
        self._iterations += 1
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        rng = random.Random(seed_of(self.seed, self.rank, worker, epoch))
        shuffle = (
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
            if self.shuffle_buffer > 1
            else None
        )
        fn, coll = (compact, collate_compact) if self.compact_frames else (decode, collate)
        *per_sample, batch = _sample_stages(
            self.split, fn, self.augment, self.batch_size, False, self.collation_fn or coll, shuffle
        )
        hands = deal_shards(self.urls, self.seed, epoch, self.rank * workers + worker, self.world * workers)
        # one pipeline per pass, so the shuffle buffer empties at the end of each pass and
        # never mixes two; the dealt shards are already this worker's own: no worker split
        samples = itertools.chain.from_iterable(
            wds.DataPipeline(lambda hand=hand: ({"url": url} for url in hand), *per_sample[1:]).iterator()
            for hand in hands
        )
        return islice(batch(samples), self.batches)


def deal_shards(urls: list[str], seed: int, epoch: int, consumer: int, consumers: int) -> Iterator[list[str]]:
    """Consumer ``consumer`` of ``consumers``'s hands for one epoch, one per pass: pass p
    permutes all shards with a generator seeded by (seed, epoch, p), the same for every
    consumer, and hands this consumer every ``consumers``-th shard of it. With more
    consumers than shards, an empty hand becomes one shard drawn at random."""
    for p in itertools.count():
        order = list(urls)
        random.Random(seed_of(seed, epoch, p)).shuffle(order)
        yield order[consumer::consumers] or [random.Random(seed_of(seed, epoch, p, consumer)).choice(urls)]


class ShardReadError(RuntimeError):
    """A shard could not be read after retries: the job stops and names it."""

    def brief(self) -> str:
        """The one line naming the shard. A DataLoader worker's error is re-raised in the
        main process with the worker's whole traceback as its message; keep its last line."""
        lines = str(self).strip().splitlines() or [""]
        tag = f"{type(self).__module__}.{type(self).__name__}: "
        return next((line[len(tag) :] for line in reversed(lines) if line.startswith(tag)), lines[-1])


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


def open_shards(src: Iterable[dict[str, Any]], attempts: int = 4) -> Iterator[dict[str, Any]]:
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


def _expand_tars(src: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Tar members → samples; a corrupt tar raises (webdataset adds the shard URL)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    return group_by_keys(tar_file_expander(src))


def loader_workers(requested: int | str, device: torch.device, local_ranks: int = 1) -> int:
    """Loader worker processes per rank. ``"auto"``: the cores this process may use,
    shared among the ranks of this host; with an accelerator all but one go to the
    loader (the main process only feeds the device), on the CPU a quarter (the model
    needs the rest)."""
    if requested != "auto":
        if isinstance(requested, str) or requested < 0:
            raise ValueError(f"workers must be a count >= 0 or 'auto', got {requested!r}")
        return requested
    cores = max(1, usable_cpus() // max(1, local_ranks))
    return cores - 1 if device.type != "cpu" else cores // 4


def data_loader(
    ds: torch.utils.data.Dataset,
    workers: int,
    *,
    device: torch.device | str = "cpu",
    persistent: bool = False,
    prefetch: int = 4,
) -> torch.utils.data.DataLoader:
    """The DataLoader over a stage list: batches are made in the stages (batch_size=None),
    pinned when they go to a CUDA device, ``prefetch`` batches ahead per worker, and the
    workers kept across iterations when ``persistent`` (a ``TrainStream`` then moves to
    the next epoch on each iteration)."""
    device = torch.device(device)
    return torch.utils.data.DataLoader(
        ds,
        batch_size=None,
        num_workers=workers,
        persistent_workers=persistent and workers > 0,
        prefetch_factor=prefetch if workers else None,
        pin_memory=device.type == "cuda",
        worker_init_fn=_worker_init if workers else None,
    )


def _worker_init(_: int) -> None:
    # One thread per loader worker: N workers × all-cores would oversubscribe the CPUs.
    torch.set_num_threads(1)
