"""Running a torch module in evaluation mode for a moment, whatever mode it was in."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def evaluation_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`module` in evaluation mode inside the block, back in its own mode afterwards (also on an error).

    Why: the searches and measurements that run a model mid-training (perturbation searches, passes on
    inputs that are not real ones, accuracy checks) must not let BatchNorm fold their statistics into its
    running averages, nor leave a training run in evaluation mode.
    """
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
