"""One process per device: under torchrun (WORLD_SIZE > 1) join the process group; DDP over the model."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mpafer.devices import resolve_device

from .config import ConfigError


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device_arg: str | None) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    try:
        device = resolve_device(device_arg)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if world > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world,
                                device_id=device if device.type == "cuda" else None)
    return Dist(rank, world, device)


def wrap_ddp(model: torch.nn.Module, ctx: Dist) -> torch.nn.Module:
    """DDP over the whole model; only what learns is synchronised.

    Frozen weights (``requires_grad=False``) never enter DDP's gradient buckets. Buffers are not
    re-broadcast before each forward: they are derived from the frozen weights, identical on every
    rank, and what is learned from data (the prototypes) is broadcast explicitly by the stage.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
               broadcast_buffers=False)
