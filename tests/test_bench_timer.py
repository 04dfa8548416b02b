"""The benches' one device timer: the CPU branch for real, the CUDA branch's ordering
with a stand-in for ``torch.cuda`` (no GPU here). Fast tier: no process, no server."""

import time

import pytest
import torch

from jobs.bench.common import DeviceTimer


def test_on_the_cpu_device_time_is_the_wall_clock_and_host_cpu_is_kept_apart():
    timer = DeviceTimer("cpu")
    with timer:
        t = time.process_time()
        while time.process_time() - t < 0.05:  # work
            pass
    with timer:
        time.sleep(0.1)  # waiting: wall time, no CPU
    assert timer.method == "wall clock" and timer.windows == 2
    assert timer.device_seconds == timer.wall_seconds >= 0.15
    assert 0.05 <= timer.cpu_seconds < timer.wall_seconds - 0.05
    assert timer.as_dict() == {
        "method": "wall clock",
        "device": "cpu",
        "windows": 2,
        "device_seconds": timer.device_seconds,
        "wall_seconds": timer.wall_seconds,
        "cpu_seconds": timer.cpu_seconds,
    }


class FakeCuda:
    """What ``DeviceTimer`` uses of ``torch.cuda``, logging every call in order."""

    def __init__(self, elapsed_ms: float):
        self.log: list[tuple] = []
        self.elapsed_ms = elapsed_ms
        cuda = self

        class Event:
            made = 0

            def __init__(self, enable_timing=False, blocking=False):
                Event.made += 1
                self.name = f"e{Event.made}"
                cuda.log.append(("Event", self.name, enable_timing, blocking))
                self.done = False

            def record(self, stream=None):
                cuda.log.append(("record", self.name, stream))

            def synchronize(self):
                cuda.log.append(("event.synchronize", self.name))
                self.done = True

            def elapsed_time(self, end):
                assert end.done, "elapsed_time read before the end event completed"
                cuda.log.append(("elapsed_time", self.name, end.name))
                return cuda.elapsed_ms

        self.Event = Event

    def synchronize(self, device=None):
        self.log.append(("synchronize", str(device)))

    def current_stream(self, device=None):
        self.log.append(("current_stream", str(device)))
        return f"stream-of-{device}"


def test_on_cuda_the_window_is_drained_and_timed_by_events_in_order():
    cuda = FakeCuda(elapsed_ms=250.0)
    timer = DeviceTimer(torch.device("cuda", 1), cuda=cuda)  # a device object needs no GPU
    with timer:
        cuda.log.append(("work",))
    stream = "stream-of-cuda:1"
    assert cuda.log == [
        ("synchronize", "cuda:1"),  # what was queued before is not counted
        ("current_stream", "cuda:1"),
        ("Event", "e1", True, True),  # timing, and blocking: the host sleeps while it waits
        ("record", "e1", stream),
        ("work",),
        ("Event", "e2", True, True),
        ("record", "e2", stream),
        ("event.synchronize", "e2"),
        ("synchronize", "cuda:1"),  # other streams (the JPEG decoder's) drained too
        ("elapsed_time", "e1", "e2"),
    ]
    assert timer.method == "CUDA events"
    assert timer.device_seconds == pytest.approx(0.25)  # the events' figure, not the host's clock
    assert timer.wall_seconds < 0.25 and timer.windows == 1


def test_windows_add_up_and_a_failed_window_is_not_a_measurement():
    cuda = FakeCuda(elapsed_ms=100.0)
    timer = DeviceTimer("cuda", cuda=cuda)
    for _ in range(3):
        with timer:
            pass
    assert timer.windows == 3 and timer.device_seconds == pytest.approx(0.3)
    before = len(cuda.log)
    with pytest.raises(RuntimeError), timer:
        raise RuntimeError("step failed")
    assert timer.windows == 3 and timer.device_seconds == pytest.approx(0.3)
    assert not any(entry[0] == "elapsed_time" for entry in cuda.log[before:])
