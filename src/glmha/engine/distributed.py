"""Process-group setup for ``torchrun`` (one process per GPU, any number of nodes).

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; with ``WORLD_SIZE > 1`` the
trainer joins the group (NCCL on GPUs, gloo on CPU). A caller that already initialised a
group (e.g. ``torch.multiprocessing.spawn``) keeps its own.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    created_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def broadcast_flag(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (so all ranks stop at the same iteration)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device if dist.get_backend() == "nccl" else "cpu")
        dist.broadcast(value, 0)
        return bool(value.item())

    def broadcast_object(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank, e.g. a plan rank 0 measured."""
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, 0, device=self._object_device())
        return box[0]

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank: work shared out and collected."""
        if self.world_size == 1:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def _object_device(self) -> torch.device:
        # NCCL moves objects through this rank's GPU; gloo through the CPU
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.created_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str | torch.device | None = None) -> DistributedContext:
    """Join the process group if running under ``torchrun``; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    created = False
    use_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        created = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    local_rank = int(os.environ.get("LOCAL_RANK", rank if world_size > 1 else 0))
    if device is not None and not (use_cuda and world_size > 1):
        chosen = torch.device(device)
    elif use_cuda:
        chosen = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device("cpu")
    return DistributedContext(rank, world_size, local_rank, chosen, created)
