"""``bench train``'s sides run the training path itself: the from-shards side takes the
persistent loader's compact batches through ``prepare`` (decode and augmentation on
the device) before every step; model-only prepares one batch once. Both sides are
timed alike. Fast tier: shards built in process, no loader workers."""

import pytest
import torch

from avfusion.augment import BatchAugment
from avfusion.loader import Batch
from jobs.bench import train as bench

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return bench.make_shards(tmp_path_factory.mktemp("bench_train"), clips=6, frame_size=32, seconds=2.0)


class CountingAugment(BatchAugment):
    """The real augmentation, noting what each call got and gave."""

    def __init__(self, like: BatchAugment):
        super().__init__(
            like.cfg,
            num_classes=like.num_classes,
            seed=like.seed,
            rank=like.rank,
            sample_rate=like.sample_rate,
            mixup_alpha=like.mixup_alpha,
            mixup_prob=like.mixup_prob,
        )
        self.calls: list[tuple[bool, torch.device, torch.device, int]] = []

    def __call__(self, batch: Batch, device, epoch: int, step: int) -> tuple[Batch, torch.Tensor]:
        out, soft = super().__call__(batch, device, epoch, step)
        compact = batch.frames is None and batch.jpeg is not None  # JPEG bytes in, decoded here
        assert out.frames is not None
        self.calls.append((compact, torch.device(device), out.frames.device, step))
        return out, soft


def _run(shards, tmp_path, steps: int):
    cfg = bench.recipe_config("small", shards, str(tmp_path / "run"), batch_size=2, steps=steps, workers="0")
    r = bench.training_run(cfg, CPU)
    assert isinstance(r.augment, BatchAugment)  # stream() built the training path's own
    r.augment = CountingAugment(r.augment)
    return r


def test_from_shards_prepares_every_step_s_batch_on_the_device(shards, tmp_path):
    r = _run(shards, tmp_path, steps=3)
    assert r.cfg.augment.enabled and r.cfg.augment.content and r.cfg.mixup_alpha > 0  # the recipe's
    side = bench.from_shards(r, warmup=1, steps=2)
    assert r.augment.calls == [(True, CPU, CPU, step) for step in range(3)]  # one per step, in order
    assert r.step == 3 and side.samples == 4  # the 2 timed steps of batch 2
    assert side.timer.windows == 1 and side.timer.device == CPU and side.per_second > 0


def test_model_only_prepares_one_batch_once_and_steps_on_it(shards, tmp_path):
    r = _run(shards, tmp_path, steps=3)
    side = bench.model_only(r, warmup=1, steps=2)
    assert r.augment.calls == [(True, CPU, CPU, 0)]
    assert r.step == 3 and side.samples == 4 and side.timer.windows == 1


def test_the_bench_runs_on_the_cpu_and_writes_its_results(shards, tmp_path, capsys):
    argv = ["--shards", shards, "--device", "cpu", "--config", "small", "--batch-size", "2"]
    argv += ["--warmup", "1", "--steps", "1", "--workers", "0", "--results", str(tmp_path / "results")]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "Training step on cpu, recipe small" in out and "device time by wall clock" in out
    from avfusion import storage

    record = storage.read_json(str(tmp_path / "results" / "train.json"))
    results = record["results"]
    assert results["device"] == "cpu" and results["workers"] == 0
    for side in ("model_only", "from_shards"):
        assert results[side]["samples"] == 2 and results[side]["method"] == "wall clock"
    assert "| step | samples/s |" in storage.read_text(str(tmp_path / "results" / "train.md"))


def test_a_device_that_cannot_be_had_is_one_line(shards, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is here")
    argv = ["--shards", shards, "--device", "cuda", "--results", str(tmp_path / "results")]
    assert bench.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("avfusion bench train: --device:")
