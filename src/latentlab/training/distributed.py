"""Several processes, one run: torch.distributed under `torchrun`, gradients averaged by DDP.

    torchrun --nproc_per_node 2 -m latentlab train --vae runs/vae --out runs/model ...

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; each process takes GPU LOCAL_RANK (NCCL), or runs on
the CPU (gloo). Every process draws the same random numbers for the whole global batch and keeps its
own slice, so a run's result does not depend on how many processes share it: with the same global
batch and seed, two processes end with the weights of one, up to the order of floating-point sums.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import LatentlabError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """The process that writes files and prints."""
        return self.rank == 0

    def shard(self, batch: int) -> slice:
        """This process's part of a global batch of `batch` examples."""
        if batch % self.size:
            raise LatentlabError(f"the batch size {batch} does not split evenly over {self.size} processes")
        local = batch // self.size
        return slice(self.rank * local, (self.rank + 1) * local)

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every process's `x` (same shape), concatenated along dim 0 in rank order."""
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def launched() -> bool:
    """Whether torchrun (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_world(device: torch.device) -> World:
    """Join the process group if torchrun started several processes; else a world of one on `device`."""
    if not launched():
        return World(device=device)
    rank, size, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=size,
                                device_id=device if device.type == "cuda" else None)
    return World(rank=rank, size=size, device=device)


def close_world(world: World) -> None:
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
