"""The GPU paths' correctness, proved where there is no GPU: the stream ordering of the
batched JPEG decode (with a stream object that logs what it is asked), the CPU
fallback when a device cannot decode JPEG (a real decoder refusing a real device),
the cached blur kernels against the reference loop, and a whole augmented training
step on the meta device, where any read of a device value or any blocking host copy
is caught (what CUDA's sync debug mode reports on a GPU)."""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from avfusion import augment as A
from avfusion import jpeg
from avfusion.augment import AugmentConfig, BatchAugment
from avfusion.corruptions import gaussian_kernel
from avfusion.loader import Batch, decode_frames
from avfusion.train import train_step
from tests.test_train_loop import _run_on

META = torch.device("meta")


class FakeStream:
    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def wait_stream(self, other: FakeStream) -> None:
        self.log.append(("wait", self.name, other.name))


class FakeCuda:
    """``torch.cuda``'s stream API as ``on_side_stream`` uses it, logging each call."""

    def __init__(self):
        self.log: list = []
        self.active = "caller"
        self.made = 0

    def current_stream(self, device):
        return FakeStream(self.active, self.log)

    def Stream(self, device):  # noqa: N802 (torch.cuda's name)
        self.made += 1
        return FakeStream(f"side{self.made}", self.log)

    def stream(self, s: FakeStream):
        cuda = self

        class Ctx:
            def __enter__(self):
                cuda.log.append(("enter", s.name))
                cuda.active = s.name

            def __exit__(self, *exc):
                cuda.log.append(("exit", s.name))
                cuda.active = "caller"

        return Ctx()


class Out:
    def __init__(self, cuda: FakeCuda):
        self.cuda = cuda

    def record_stream(self, s: FakeStream) -> None:
        self.cuda.log.append(("record", s.name))


def test_the_decode_runs_on_a_side_stream_and_the_caller_waits_before_reading():
    cuda = FakeCuda()

    def decode():
        cuda.log.append(("decode on", cuda.active))  # allocations come from this stream's pool
        return Out(cuda)

    dev = torch.device("cuda:0")
    jpeg.on_side_stream(decode, dev, cuda)
    assert cuda.log == [
        ("enter", "side1"),
        ("decode on", "side1"),
        ("exit", "side1"),
        ("wait", "caller", "side1"),  # the caller's kernels run after the decode's writes
        ("record", "caller"),  # its memory is not reused until the caller's reads are done
    ]
    cuda.log.clear()
    jpeg.on_side_stream(decode, dev, cuda)
    assert cuda.made == 1 and cuda.log[1] == ("decode on", "side1")  # one side stream per device


def _jpegs(n: int, size: int = 24) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    blobs, images = [], []
    for _ in range(n):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        images.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    return torch.from_numpy(np.concatenate(blobs)), torch.from_numpy(offsets), images


def test_a_device_that_cannot_decode_jpeg_falls_back_to_the_cpu_once_with_one_warning():
    """The meta device has no JPEG decoder: the real decoder refuses it, the batch is
    decoded on the CPU and lands on the device, and the warning comes once."""
    data, offsets, images = _jpegs(4)
    jpeg._NO_DEVICE_DECODE.discard("meta")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = decode_frames(data, offsets, 2, META)
        again = decode_frames(data, offsets, 2, META)
    assert out.device == META and out.shape == again.shape == (2, 2, 24, 24, 3)
    said = [str(w.message) for w in caught if "JPEG decode on meta failed" in str(w.message)]
    assert len(said) == 1 and "decoded on the CPU" in said[0], [str(w.message) for w in caught]
    on_cpu = decode_frames(data, offsets, 2, torch.device("cpu"))
    assert np.array_equal(on_cpu.reshape(4, 24, 24, 3).numpy(), np.stack(images))  # what PIL decodes


def _reference_blur_matrix(n: int, sigma: float) -> np.ndarray:
    """The per-element loop the cached, vectorised build replaced."""
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    m = np.zeros((n, n), np.float32)
    for i in range(n):
        for j, wgt in enumerate(k):
            src = i + j - r
            if n > r:
                src = -src if src < 0 else (2 * (n - 1) - src if src >= n else src)
            m[i, min(max(src, 0), n - 1)] += wgt
    return m


@pytest.mark.parametrize("n, sigma", [(224, 3.0), (224, 1.5), (112, 4.5), (32, 6.0), (8, 5.0), (3, 2.0)])
def test_cached_blur_kernels_equal_the_reference_and_are_built_once(n, sigma):
    A._blur_matrix.cache_clear()
    m = A._blur_matrix(n, sigma, torch.device("cpu"))
    np.testing.assert_allclose(m.numpy(), _reference_blur_matrix(n, sigma), rtol=0, atol=1e-7)
    assert A._blur_matrix(n, sigma, torch.device("cpu")) is m
    assert A._blur_matrix.cache_info().hits == 1


class SyncDetector(TorchDispatchMode):
    """What would make the host wait for a GPU: a device value read on the host (item,
    bool, tolist, nonzero, a device→host copy) or a host→device copy that blocks."""

    READS = {"aten._local_scalar_dense", "aten.nonzero", "aten.is_nonzero", "aten.equal"}
    READS |= {"aten.masked_select"}

    def __init__(self):
        super().__init__()
        self.found: list[str] = []
        self.copies = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        if name in self.READS and args[0].device.type != "cpu":  # host values are free to read
            self.found.append(name)
        if name in ("aten._to_copy", "aten.copy_"):
            src = args[1] if name == "aten.copy_" else args[0]
            dst = args[0].device if name == "aten.copy_" else kwargs.get("device", src.device)
            if src.device.type == "cpu" and dst.type != "cpu":
                self.copies += 1
                if not (kwargs.get("non_blocking") or (len(args) > 2 and args[2])):
                    self.found.append(f"blocking host→device copy {tuple(src.shape)}")
            if src.device.type != "cpu" and dst.type == "cpu":
                self.found.append(f"device→host copy {tuple(src.shape)}")
        return func(*args, **kwargs)


def test_a_whole_augmented_training_step_never_waits_for_the_device():
    """Every augmentation op on (content, all dropouts incl. blur and noise, frame
    drop, temporal crops, mixup) and the step after it, on the meta device: nothing is
    read back and every host→device copy is non-blocking (pinned on CUDA)."""
    cfg = AugmentConfig(
        content=True, p_audio=0.45, p_video=0.5, p_drop_frames=0.5, crop_seconds=0.25, crop_frames=3
    )
    aug = BatchAugment(cfg, num_classes=4, mixup_alpha=0.4, mixup_prob=1.0)
    r = _run_on(META)
    b, t, s = 16, 4, 32
    rng = np.random.default_rng(0)
    batch = Batch(
        torch.from_numpy(rng.uniform(-0.5, 0.5, (b, 8_000)).astype(np.float32)),
        torch.from_numpy(rng.integers(0, 255, (b, t, s, s, 3), dtype=np.uint8)),
        torch.arange(b) % 4,
        [f"k{i}" for i in range(b)],
    )
    A._blur_matrix.cache_clear()
    for step in range(6):
        with SyncDetector() as d:
            x, soft = aug(batch, META, 0, step)
            loss, _ = train_step(r, x, soft)
        assert not d.found, (step, d.found)
        assert x.frames.device == META and loss.device == META and d.copies > 0
    assert A._blur_matrix.cache_info().misses > 0  # blur was drawn: its kernels were built in there too


def test_asking_for_cuda_where_it_is_unusable_is_one_line_with_the_reason(tmp_path, capsys):
    from avfusion.device import DeviceError, choose_device, cuda_problem
    from jobs import train as train_job

    if cuda_problem() is None:
        pytest.skip("CUDA is usable here")
    with pytest.raises(DeviceError, match="CUDA is unusable here: " + re.escape(cuda_problem())):
        choose_device("cuda")
    assert train_job.main([str(tmp_path), "--out", str(tmp_path / "run"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("avfusion train: --device cuda: CUDA is unusable"), err


def test_auto_says_which_device_it_took_and_why():
    from avfusion.device import choose_device, cuda_problem

    said: list[str] = []
    assert choose_device("auto", gpus_assigned=0, say=said.append) == torch.device("cpu")
    assert said == ["device auto → cpu: the scheduler gave this process no GPU"]
    said.clear()
    dev = choose_device("auto", say=said.append)
    problem = cuda_problem()
    expected = f"device auto → cpu: {problem}" if problem else f"device auto → {dev} ("
    assert len(said) == 1 and said[0].startswith(expected), said


def test_ranks_draw_different_model_masks_and_a_resume_draws_the_same():
    from avfusion.train import seed_model_rng

    def masks(rank: int, epoch: int) -> torch.Tensor:
        seed_model_rng(0, rank, epoch)
        return torch.nn.functional.dropout(torch.ones(64), 0.5)

    assert not torch.equal(masks(0, 3), masks(1, 3))
    assert not torch.equal(masks(0, 3), masks(0, 4))
    assert torch.equal(masks(1, 3), masks(1, 3))


def test_the_audio_front_end_turns_tf32_off_on_cuda_and_restores_it():
    from avfusion.model import _no_tf32

    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is None or not hasattr(conv, "fp32_precision"):
        before = torch.backends.cudnn.allow_tf32
        with _no_tf32("cuda"):
            assert torch.backends.cudnn.allow_tf32 is False
        assert torch.backends.cudnn.allow_tf32 == before
        return
    before = conv.fp32_precision
    with _no_tf32("cuda"):
        assert conv.fp32_precision == "ieee"
    with _no_tf32("cpu"):
        assert conv.fp32_precision == before
    assert conv.fp32_precision == before


def test_evaluation_counts_per_class_without_bincount():
    from avfusion.metrics import Tally

    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.integers(0, 7, 50))
    t = Tally(7)
    t.add(torch.randn(50, 7), torch.rand(50, 2), target)
    assert t.sums[4:11].tolist() == torch.bincount(target, minlength=7).double().tolist()


def test_a_local_rank_beyond_the_gpus_is_one_line(monkeypatch):
    """torchrun with more ranks than GPUs: rank 1 on a one-GPU machine is told why,
    instead of a CUDA error from deep inside the first allocation."""
    from avfusion.device import DeviceError, choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match="local rank 1 would take cuda:1, but torch sees 1 GPU"):
        choose_device("auto", index=1, say=lambda line: None)


@pytest.mark.parametrize(
    "bad", ["cuda:abc", "cuda:-1", "cuda:", "cuda:0:0", "cudax", "cuda0", "cuda:99", "CUDA"]
)
def test_malformed_or_absent_cuda_devices_are_one_line_where_cuda_works(bad, monkeypatch):
    from avfusion import device

    monkeypatch.setattr(device, "cuda_problem", lambda: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(device.DeviceError):
        device.choose_device(bad)


def test_a_bad_frame_is_a_data_error_and_leaves_the_device_decoding(monkeypatch):
    """A truncated JPEG fails on the device and on the CPU alike: it is raised as it is
    and the device is not switched to CPU decoding (nor blamed in a warning)."""
    name, fn = jpeg.backend()
    data, offsets, _ = _jpegs(2)
    good = [data[offsets[0] : offsets[1]], data[offsets[1] : offsets[2]]]
    bad = [good[0], good[1][: len(good[1]) // 3]]
    jpeg._NO_DEVICE_DECODE.discard("meta")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises((RuntimeError, ValueError)):
            jpeg.decode(bad, META)
    assert "meta" not in jpeg._NO_DEVICE_DECODE and not caught
