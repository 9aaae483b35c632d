"""Weight averaging (`keep="average"`): a run returns the mean of its good epochs' weights over the second
half of its budget, not one epoch's.

After Stochastic Weight Averaging (Izmailov et al., UAI 2018), from its description: the weights a run
visits late in training lie around a wide region of low loss, and their mean sits nearer its centre than
any one of them, which generalises better. That is what a defender with a few hundred clean samples lacks:
on the 21-identity face model, unlearning a patch backdoor (`adversarial-patch-small`, 80 epochs) left
0.702 and 0.714 clean accuracy at its last epoch in two seeds, and the mean of epochs 41-80 of the same runs
0.711 and 0.727, with attack success as low or lower (0.034 -> 0.032, 0.052 -> 0.045); in a third seed the
two were alike (docs/decisions.md, "Weight averaging"). Every averaged epoch is one the run already unlearned in, so the mean does not bring the
backdoor back the way interpolating towards the start model does.

Averaging is over the epochs the run kept as good (a diverged epoch is never offered), from epoch
`epochs // 2 + 1` on. A run that ends before that (early stopping) has nothing to average and returns its
last good epoch. Running statistics of BatchNormalization belong to the weights they were measured with,
not to their mean, so they are measured afresh on the training data (`refresh_batch_norm`).
"""
from __future__ import annotations

import numpy as np
import torch

from fp_onnx.converters.ops.norm import BatchNorm
from fp_onnx.data import Dataset

AVERAGE_FROM = 0.5
"""The share of the budget after which epochs are averaged."""


class WeightAverage:
    """A running mean of the state dicts offered from `first_epoch` on (float tensors only; integer buffers,
    e.g. counters, keep their latest value)."""

    def __init__(self, epochs: int):
        self.first_epoch = int(epochs * AVERAGE_FROM) + 1
        self.count = 0
        self._sum: dict[str, torch.Tensor] = {}
        """Float tensors: the running sum, in float64."""
        self._latest: dict[str, torch.Tensor] = {}
        """Other tensors: the latest value."""
        self._dtypes: dict[str, torch.dtype] = {}

    def offer(self, state: dict[str, torch.Tensor], epoch: int) -> None:
        if epoch < self.first_epoch:
            return
        for name, tensor in state.items():
            self._dtypes[name] = tensor.dtype
            if torch.is_floating_point(tensor):
                total = self._sum.get(name)
                value = tensor.detach().double()
                self._sum[name] = value.clone() if total is None else total + value
            else:
                self._latest[name] = tensor.detach().clone()
        self.count += 1

    def state(self) -> dict[str, torch.Tensor] | None:
        """The averaged state dict (each tensor in its own dtype), or None when nothing was offered."""
        if self.count == 0:
            return None
        return {name: (self._sum[name] / self.count).to(dtype) if name in self._sum else self._latest[name]
                for name, dtype in self._dtypes.items()}


def batch_norms(module: torch.nn.Module) -> list[BatchNorm]:
    return [m for m in module.modules() if isinstance(m, BatchNorm)]


@torch.no_grad()
def refresh_batch_norm(module: torch.nn.Module, train: Dataset, batch_size: int, device: torch.device) -> bool:
    """Measure every BatchNormalization's running mean and variance afresh over `train` (a cumulative
    average over its batches, in one pass); False when the module has none. The module's mode is restored."""
    norms = batch_norms(module)
    if not norms:
        return False
    momenta = [norm.torch_momentum for norm in norms]
    was_training = module.training
    module.train()
    try:
        count = 0
        for batch in train.batches(batch_size):
            if len(batch.x) < 2:  # one sample has no variance to measure
                continue
            count += 1
            for norm in norms:
                norm.torch_momentum = 1.0 / count  # running = mean of the batch statistics so far
            module(torch.from_numpy(np.asarray(batch.x, dtype=np.float32)).to(device))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.torch_momentum = momentum
        module.train(was_training)
    return True
