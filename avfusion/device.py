"""The one choice of compute device, shared by training, evaluation and labelling.

Why one function: a process must never put a model on a GPU it was not given. Ray
does not hide GPUs from tasks and actors that asked for none (ray-project/ray#54868),
so ``torch.cuda.is_available()`` alone says nothing about what this process may
use; the launcher knows (Ray's resources, torchrun's local rank) and passes it in.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import torch


class DeviceError(ValueError):
    """The device asked for cannot be used here (the job says so in one line)."""


def choose_device(
    requested: str = "auto",
    *,
    gpus_assigned: int | None = None,
    index: int = 0,
    say: Callable[[str], None] | None = None,
) -> torch.device:
    """``requested``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    ``gpus_assigned``: how many GPUs the scheduler gave this process (Ray's resources);
    None when no scheduler says (a plain process, torchrun), 0 means none: ``auto`` is
    then always the CPU, whatever CUDA shows. ``index``: the GPU to take with a bare
    ``cuda``/``auto`` (the local rank). ``cuda`` where CUDA is unusable raises with the
    reason; ``auto`` tells ``say`` which device it took and why (the jobs whose stdout is
    a log pass ``print``; ``predict --json`` and label's actors pass nothing)."""
    if requested == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", requested):
        problem = cuda_problem()
        if problem is not None:
            raise DeviceError(f"--device {requested}: CUDA is unusable here: {problem}")
        n = int(requested.split(":")[1]) if ":" in requested else index
        if n >= torch.cuda.device_count():
            raise DeviceError(
                f"--device {requested}: cuda:{n} asked for, but torch sees {torch.cuda.device_count()} GPU(s)"
            )
        return torch.device("cuda", n)
    if requested != "auto":
        raise DeviceError(f"unknown device {requested!r} (auto, cpu, cuda, cuda:N)")
    tell = say or (lambda line: None)
    if gpus_assigned == 0:
        tell("device auto → cpu: the scheduler gave this process no GPU")
        return torch.device("cpu")
    problem = cuda_problem()
    if problem is not None:
        tell(f"device auto → cpu: {problem}")
        return torch.device("cpu")
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"local rank {index} would take cuda:{index}, but torch sees {torch.cuda.device_count()} "
            "GPU(s): start one process per GPU, or pass --device cpu"
        )
    dev = torch.device("cuda", index)
    try:
        name = torch.cuda.get_device_name(dev)
    except (RuntimeError, AssertionError) as exc:  # listed but not initialisable: said, not hidden
        name = f"its name unreadable: {str(exc).splitlines()[0][:120]}"
    tell(f"device auto → {dev} ({name})")
    return dev


def cuda_problem() -> str | None:
    """Why this process cannot use CUDA, in one line, or None when it can. A driver
    older than the wheel's CUDA shows only as a warning from ``is_available()``."""
    if torch.version.cuda is None:
        return "this torch is built without CUDA (a CPU-only wheel)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        usable = torch.cuda.is_available()
    if usable:
        return None
    said = [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()]
    return said[0][:300] if said else "torch sees no CUDA device (no NVIDIA driver or no GPU visible)"


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait: on CUDA it is pinned
    first (a copy from pageable memory waits for the device's stream to drain)."""
    device = torch.device(device)
    if device.type == "cpu":
        return t
    if device.type == "cuda" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
