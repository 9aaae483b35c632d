"""The cosine learning-rate schedule the stronger recipes share (one value per optimizer step)."""
from __future__ import annotations

import math

import torch


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Every group's learning rate follows 0.5 (1 + cos(pi t / T)) of its own start value, down to 0 at T."""
    total = max(1, total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total)))
