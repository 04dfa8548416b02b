"""Distributed set-up in one place: single process, torchrun, or Ray Train.

The launcher says who this process is: ``jobs/train.py`` reads torchrun's RANK /
WORLD_SIZE / LOCAL_RANK, the Ray Train worker asks Ray (``avfusion.executor.ray_train``),
and both pass rank, world and local rank in; this module reads no environment of its
own. The device comes from ``avfusion.device.choose_device`` (or is Ray's own).
NCCL on GPU, gloo on CPU. The training loop only sees a ``DistEnv``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as tdist

from avfusion.device import choose_device


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float] | torch.Tensor) -> list[float]:
        """Sum over ranks of a vector of numbers (floats or a tensor on any device):
        one collective and one host read, whatever the vector's length."""
        t = torch.as_tensor(values, dtype=torch.float64)
        if self.world > 1:
            t = t.to(self.device)
            tdist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()


def setup(
    device: str | torch.device = "auto",
    *,
    rank: int = 0,
    world: int = 1,
    local_rank: int = 0,
    gpus_assigned: int | None = None,
) -> DistEnv:
    """Join the process group (unless the launcher already did, as Ray Train does) and
    take the device: a ``torch.device`` as given, else ``choose_device`` of the request
    with the local rank's GPU."""
    dev = (
        device
        if isinstance(device, torch.device)
        else choose_device(device, gpus_assigned=gpus_assigned, index=local_rank, say=_say)
    )
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        # env:// rendezvous: torchrun's MASTER_ADDR/MASTER_PORT, read by torch itself.
        # device_id binds NCCL's communicator to this rank's GPU at init (no guessing, and
        # barrier() then runs on the right device).
        if dev.type == "cuda":
            tdist.init_process_group("nccl", rank=rank, world_size=world, device_id=dev)
        else:
            tdist.init_process_group("gloo", rank=rank, world_size=world)
    if tdist.is_initialized() and (tdist.get_rank(), tdist.get_world_size()) != (rank, world):
        raise RuntimeError(
            f"the process group says rank {tdist.get_rank()} of {tdist.get_world_size()}, "
            f"the launcher rank {rank} of {world}"
        )
    return DistEnv(rank, world, local_rank, dev)


def _say(line: str) -> None:
    print(line, flush=True)  # the training log (stdout), beside the epoch lines


def teardown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()
