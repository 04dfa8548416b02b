"""Distributed set-up in one place: single process, torchrun, or Ray Train.

torchrun exports RANK/WORLD_SIZE/LOCAL_RANK and we initialise the process group;
Ray Train initialises it itself and the job passes the local rank in. NCCL on GPU,
gloo on CPU. The training loop only sees a ``DistEnv``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()


def setup(device: str = "auto", local_rank: int | None = None) -> DistEnv:
    """Join the process group if launched by torchrun or Ray Train; pick the device."""
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if not tdist.is_initialized() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        tdist.init_process_group("nccl" if use_cuda else "gloo")
    if tdist.is_initialized():
        return DistEnv(tdist.get_rank(), tdist.get_world_size(), local_rank, dev)
    return DistEnv(0, 1, 0, dev)


def teardown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()
