"""Distributed training: under torchrun (WORLD_SIZE > 1) each rank takes its slice of every
batch and rank 0 alone validates, logs and writes files (training/loop.py)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from magncli.devices import resolve_device


class Distributed:
    """Rank, world size and device. Joins the process group torchrun describes
    (WORLD_SIZE > 1), or uses one the caller has initialised already."""

    def __init__(self, device_spec: str):
        self.owns_group = False
        if dist.is_available() and dist.is_initialized():
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank = int(os.environ.get("RANK", "0"))
            self.world = int(os.environ.get("WORLD_SIZE", "1"))
        device = resolve_device(device_spec)
        if device.type == "cuda" and self.world > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))
            torch.cuda.set_device(device)
        self.device = device
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owns_group = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
