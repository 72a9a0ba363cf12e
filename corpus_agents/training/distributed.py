"""Data-parallel training under `torchrun`: the process group and the few collectives the trainer needs.

Rank 0 owns the workspace catalog and the console; the other ranks receive what they need from it by
broadcast and send their results to rank 0 by gather. Outside `torchrun` (WORLD_SIZE unset or 1) there is
no process group and every collective is the identity on the one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes (rank 0 of 1 when not under `torchrun`)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, cuda: bool) -> Distributed:
        """Join `torchrun`'s process group: NCCL with each rank on `cuda:LOCAL_RANK`, or gloo on CPU."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        ctx = cls(int(os.environ["RANK"]), world_size, int(os.environ["LOCAL_RANK"]))
        if cuda:
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
        return ctx

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank (the other ranks' `value` is ignored)."""
        if not self.enabled:
            return value
        box: list[Any] = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's `value` in rank order on rank 0; an empty list on the other ranks."""
        if not self.enabled:
            return [value]
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(value, out, dst=0)
        return out or []

    def barrier(self) -> None:
        """Wait for every rank (e.g. until rank 0 has written a file the others read)."""
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group, if this process joined one."""
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
