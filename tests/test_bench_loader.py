"""``bench loader``'s batched paths time each batch's decode + augmentation as a device
window (after one warm-up batch), apart from the host. Fast tier: one run in process."""

import pytest
import torch

from jobs.bench import loader as bench


@pytest.fixture
def one_thread_restored():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # measure() sets one thread, as in its own process


def test_the_batched_cpu_path_times_each_batch_after_the_first(tmp_path, one_thread_restored):
    shards = bench.make_shards(tmp_path, clips=4, frame_size=32)
    timer = bench.measure("new-cpu", shards, batches=3, batch_size=2)
    assert timer is not None and timer.method == "wall clock" and timer.windows == 2
    assert timer.device_seconds == timer.wall_seconds > 0 and timer.cpu_seconds > 0
    assert bench.measure("new-loader", shards, batches=2, batch_size=2) is None  # nothing on a device
