"""Per-channel multipliers on prune points of a converted model: the torch twin of the masked reference.

Ranking criteria from later work (RNP, ANP) learn one number per channel: they
multiply a prune point's feature tensor by a mask (and, for ANP, by an adversarial
perturbation of it) inside the torch module made from the vendor's graph
(`fp_onnx.converters.onnx_to_torch`), and optimise those numbers on clean data.
A mask of 0 computes exactly what surgery computes after removing the channel
(`fp_onnx.surgery.mask_channels` is the same multiplication on the ONNX side), so
a criterion's view of "pruned" is the shipped model's.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from fp_onnx.converters.graph_module import OnnxGraphModule
from fp_onnx.prune_point import PrunePoint


def broadcast_shape(point: PrunePoint, ndim: int) -> list[int]:
    """Shape that lines a (C,) vector up with `point`'s channel axis in a rank-`ndim` tensor."""
    shape = [1] * ndim
    shape[point.channel_axis] = -1
    return shape


class ChannelMultipliers:
    """Hooks that multiply each point's tensor by `masks[i] * (1 + noise[i])` (noise only while perturbing).

    masks / noise are plain (C,) tensors the caller owns and may optimise; `remove()`
    (or leaving the `with` block) takes the hooks off the module again.
    """

    def __init__(self, module: OnnxGraphModule, points: Sequence[PrunePoint], *, trainable: bool = False,
                 noise: bool = False) -> None:
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        self.points = list(points)
        self.masks = [torch.ones(p.channels, device=device, requires_grad=trainable) for p in self.points]
        self.noise = [torch.zeros(p.channels, device=device, requires_grad=True) for p in self.points] if noise else []
        self.perturbing = False
        self._handles = [module.add_tensor_hook(p.tensor, self._hook(i)) for i, p in enumerate(self.points)]

    def _hook(self, index: int):
        point = self.points[index]

        def multiply(value: torch.Tensor) -> torch.Tensor:
            factor = self.masks[index]
            if self.perturbing and self.noise:
                factor = factor * (1 + self.noise[index])
            return value * factor.reshape(broadcast_shape(point, value.ndim)).to(value.dtype)

        return multiply

    def clamp_(self) -> None:
        """Keep masks in [0, 1] after an optimiser step (RNP and ANP both do)."""
        with torch.no_grad():
            for mask in self.masks:
                mask.clamp_(0.0, 1.0)

    def values(self) -> list:
        return [mask.detach().cpu().numpy().copy() for mask in self.masks]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "ChannelMultipliers":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
