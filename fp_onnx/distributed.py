"""Fine-tuning on several processes with DistributedDataParallel, when started by torchrun.

`torchrun --nproc-per-node N $(which fp-onnx) finetune ...` sets RANK/WORLD_SIZE;
each rank then trains on its own shard of every epoch's (seeded, identical)
permutation and DDP averages gradients, so N ranks see each sample once per epoch.
Every rank evaluates the same validation set, so they agree on early stopping
without extra communication; only rank 0 writes files. Without torchrun nothing
changes: one process, no process group.

Backend: NCCL when each rank has a GPU, gloo otherwise (CPU, tests).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> "DistributedContext":
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        context = cls(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
            dist.init_process_group(backend=backend)
        return context

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per rank under torchrun; the requested device otherwise."""
        if self.active and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        if not self.active:
            return module
        device_ids = [self.local_rank] if next(module.parameters()).is_cuda else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def mean(self, value: float, device: torch.device) -> float:
        """`value` averaged over all ranks (the value itself without torchrun); NaN and inf propagate."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return float(tensor) / self.world_size

    def shard(self, order: np.ndarray) -> np.ndarray:
        """This rank's share of an epoch's sample order (every rank gets the same count)."""
        if not self.active:
            return order
        usable = len(order) - len(order) % self.world_size
        return order[:usable][self.rank :: self.world_size]
