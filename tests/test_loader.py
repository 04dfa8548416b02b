"""The shard loader: compact batches that pin and decode on the device, shuffles
seeded per (seed, rank, worker, epoch) inside the workers, persistent workers that
move on to the next epoch, worker counts from the cores, one folds reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avfusion import storage
from avfusion.loader import (
    Batch,
    TrainStream,
    collate_compact,
    compact,
    data_loader,
    deal_shards,
    decode,
    eval_stages,
    loader_workers,
    read_folds,
)
from shards.reader import decode_sample
from shards.writer import encode_sample, tar_bytes


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    """4 shards × 6 clips, 4 smooth frames of 32² each, distinct per clip and frame."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    urls = []
    for s in range(4):
        samples = []
        for i in range(6):
            ramp = np.linspace(0, 160, 32)[None, :, None, None] + np.linspace(0, 60, 32)[None, None, :, None]
            frames = (ramp + rng.integers(0, 35, (4, 1, 1, 3))).astype(np.uint8)  # smooth, distinct per clip
            wave = rng.uniform(-0.5, 0.5, 1600).astype(np.float32)
            samples.append(
                encode_sample(f"clip{s}{i}_000000", wave, frames, (s * 6 + i) % 3, {"split": "train"}, 16_000)
            )
        storage.write_bytes(str(root / f"{s:05d}.tar"), tar_bytes(samples))
        urls.append(str(root / f"{s:05d}.tar"))
    return urls


def _raw(urls):
    """The raw samples (member name → bytes) of the first shard."""
    from avfusion.loader import _expand_tars, open_shards

    return list(_expand_tars(open_shards([{"url": urls[0]}])))


def test_compact_batch_decodes_on_the_device_like_the_per_clip_reader(tiny_shards):
    raw = _raw(tiny_shards)
    batch = collate_compact([compact(s) for s in raw])
    ref = [decode_sample(s) for s in raw]
    assert batch.frames is None and batch.waveform.dtype == torch.int16 and batch.n_frames == 4
    assert batch.jpeg.numel() < sum(r.frames.nbytes for r in ref) / 2, (
        "JPEG bytes, not pixels, cross the queue"
    )
    out = batch.to("cpu")
    np.testing.assert_array_equal(out.waveform.numpy(), np.stack([r.waveform for r in ref]))
    diff = np.abs(out.frames.numpy().astype(int) - np.stack([r.frames for r in ref]).astype(int))
    assert out.frames.shape == (6, 4, 32, 32, 3) and diff.mean() < 1.0, diff.mean()  # libjpeg vs PIL rounding
    index = torch.tensor([[3, 1]] * 6)
    picked = batch.to("cpu", frame_index=index)
    assert torch.equal(picked.frames, out.frames[:, [3, 1]]), "only the chosen frames are decoded, in order"
    assert torch.equal(out.target, torch.tensor([s.class_index for s in ref]))


def test_batch_pins_through_the_dataloader_pin_function(tiny_shards):
    """The DataLoader's pin thread calls ``torch.utils.data._utils.pin_memory.pin_memory``
    on each batch, which pins only objects with a ``pin_memory`` method. On a CPU-only
    machine nothing can be pinned: the call must reach Batch.pin_memory and return a Batch
    (a plain dataclass would come back unpinned and unchanged on CUDA too); with CUDA the
    tensors come back page-locked."""
    from torch.utils.data._utils.pin_memory import pin_memory

    batch = collate_compact([compact(s) for s in _raw(tiny_shards)])
    calls = []

    class Spy(Batch):
        def pin_memory(self):
            calls.append(1)
            return super().pin_memory()

    spy = Spy(**batch.__dict__)
    pinned = pin_memory(spy)
    assert calls == [1] and isinstance(pinned, Batch)
    if torch.cuda.is_available():
        assert pinned.jpeg.is_pinned() and pinned.waveform.is_pinned() and pinned.target.is_pinned()
    assert data_loader([], 0, device="cuda").pin_memory and not data_loader([], 0, device="cpu").pin_memory


def _keys(urls, *, rank=0, workers=2, seed=5, start_epoch=0, epochs=1):
    stream = TrainStream(
        urls, 4, split=None, batches_per_epoch=3, seed=seed, rank=rank, world=2, start_epoch=start_epoch
    )
    dl = data_loader(stream, workers, persistent=True)
    return [[(b.worker, tuple(b.keys)) for b in dl] for _ in range(epochs)]


@pytest.mark.slow
def test_shuffle_is_seeded_per_rank_and_worker_inside_the_workers(tiny_shards):
    (a,) = _keys(tiny_shards)
    assert a == _keys(tiny_shards)[0], "same seed, same stream"
    by_worker = {w: [k for ww, ks in a for k in ks if ww == w] for w in (0, 1)}
    assert len(by_worker[0]) == len(by_worker[1]) == 12 and by_worker[0] != by_worker[1], "workers differ"
    assert _keys(tiny_shards, rank=1)[0] != a, "ranks differ"
    assert _keys(tiny_shards, seed=6)[0] != a


def test_an_epoch_reads_every_shard_once_before_any_twice_and_consumers_share_none():
    """Shards are dealt from one permutation per pass: in each pass the consumers'
    hands partition the shards; the next pass is a new permutation; more consumers than
    shards still get shards."""
    from itertools import islice

    urls = [f"s{i}" for i in range(10)]
    passes = [list(islice(deal_shards(urls, 7, 0, c, 3), 2)) for c in range(3)]  # 2 passes per consumer
    assert [len(p[0]) for p in passes] == [4, 3, 3]
    assert sorted(sum((p[0] for p in passes), [])) == sorted(urls), passes
    assert sorted(sum((p[1] for p in passes), [])) == sorted(urls) and passes[0][1] != passes[0][0]
    assert next(deal_shards(urls, 7, 1, 0, 3)) != passes[0][0], "epochs differ"
    assert all(len(h) == 1 and h[0] in urls for h in islice(deal_shards(urls[:2], 7, 0, 4, 6), 3)), (
        "empty hands"
    )


def test_an_epoch_of_the_train_stream_sees_each_clip_once(tiny_shards):
    """One consumer, one epoch of exactly the set's size: every clip exactly once (drawing
    shards with replacement left some unread and read others twice)."""
    stream = TrainStream(tiny_shards, 4, split=None, batches_per_epoch=6, seed=1)
    keys = [k for b in data_loader(stream, 0) for k in b.keys]
    assert sorted(keys) == sorted(f"clip{s}{i}_000000" for s in range(4) for i in range(6))


@pytest.mark.slow
def test_persistent_workers_move_to_the_next_epoch_and_resume_at_it(tiny_shards):
    e0, e1 = _keys(tiny_shards, epochs=2)
    assert e0 != e1, "a persistent worker must not replay its first epoch"
    (resumed,) = _keys(tiny_shards, start_epoch=1)
    assert resumed == e1, "a resumed run reads the epoch it resumes at"


def test_eval_stages_read_every_sample_once_and_decode_per_clip_when_asked(tiny_shards):
    compact_keys = [k for b in data_loader(eval_stages(tiny_shards, 5, split=None), 0) for k in b.keys]
    assert sorted(compact_keys) == sorted(f"clip{s}{i}_000000" for s in range(4) for i in range(6))
    lists = list(
        data_loader(
            eval_stages(tiny_shards, 5, split=None, compact_frames=False, collation_fn=lambda xs: xs), 0
        )
    )
    assert sum(map(len, lists)) == 24 and lists[0][0]["frames"].shape == (4, 32, 32, 3)
    assert set(decode(_raw(tiny_shards)[0])) <= set(lists[0][0])


def test_loader_workers_from_cores_per_rank():
    from avfusion.cpus import usable_cpus

    cores = usable_cpus()
    assert loader_workers(3, torch.device("cpu")) == 3
    assert loader_workers("auto", torch.device("cuda"), 1) == max(1, cores) - 1
    assert loader_workers("auto", torch.device("cpu"), 1) == cores // 4
    assert loader_workers("auto", torch.device("cuda"), cores * 2) == 0
    with pytest.raises(ValueError):
        loader_workers("eight", torch.device("cpu"))


def test_one_folds_reader_for_the_bundled_set():
    from avfusion import sample_data

    assert sample_data.read_folds() == read_folds(str(sample_data.folds_csv()))
    assert len(set(sample_data.read_folds().values())) == 5
