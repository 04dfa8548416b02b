"""The one choice of compute device, shared by training, evaluation and labelling.

Why one function: a process must never put a model on a GPU it was not given. Ray
does not hide GPUs from tasks and actors that asked for none (ray-project/ray#54868),
so ``torch.cuda.is_available()`` alone says nothing about what this process may
use; the launcher knows (Ray's resources, torchrun's local rank) and passes it in.
"""

from __future__ import annotations

import torch


def choose_device(
    requested: str = "auto", *, gpus_assigned: int | None = None, index: int = 0
) -> torch.device:
    """``requested``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    ``gpus_assigned``: how many GPUs the scheduler gave this process (Ray's resources);
    None when no scheduler says (a plain process, torchrun), 0 means none: ``auto`` is
    then always the CPU, whatever CUDA shows. ``index``: the GPU to take with a bare
    ``cuda``/``auto`` (the local rank)."""
    if requested == "cpu":
        return torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} asked for, but torch sees no CUDA device")
        return torch.device(requested if ":" in requested else f"cuda:{index}")
    if requested != "auto":
        raise ValueError(f"unknown device {requested!r} (auto, cpu, cuda, cuda:N)")
    if gpus_assigned == 0 or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", index)


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait: on CUDA it is pinned
    first (a copy from pageable memory waits for the device's stream to drain)."""
    device = torch.device(device)
    if device.type == "cpu":
        return t
    if device.type == "cuda" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
