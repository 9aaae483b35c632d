"""What the learned criteria share: the vendor graph as a torch module, clean batches, the loss."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from fp_onnx.converters import onnx_to_torch
from fp_onnx.converters.graph_module import OnnxGraphModule
from fp_onnx.data import Dataset
from fp_onnx.finetune import trainable_graph, torch_device
from fp_onnx.losses import classification_loss
from fp_onnx.module_mode import evaluation_mode
from fp_onnx.prune_point import PrunePoint
from fp_onnx.ranking import RankingInputs


class TorchView:
    """The vendor model as a torch module (logits out), on the criterion's device, frozen by default."""

    def __init__(self, inputs: RankingInputs) -> None:
        graph, self.kind = trainable_graph(inputs.model)
        self.device = torch_device(inputs.device)
        self.module: OnnxGraphModule = onnx_to_torch(graph).to(self.device)
        self.module.eval()
        self.clean = inputs.clean
        self.batch_size = inputs.batch_size
        self.rng = np.random.default_rng(inputs.seed)
        torch.manual_seed(inputs.seed)

    def freeze(self) -> None:
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One shuffled pass over the clean data, as (x, y) tensors on the device."""
        order = self.rng.permutation(len(self.clean))
        labels = self.clean.labels
        for start in range(0, len(order), self.batch_size):
            indices = np.sort(order[start:start + self.batch_size])
            batch = self.clean.take(indices)
            x = torch.from_numpy(np.asarray(batch.x, dtype=np.float32)).to(self.device)
            yield x, torch.from_numpy(labels[indices]).to(self.device)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return classification_loss(self.module(x), y, self.kind)

    @torch.no_grad()
    def accuracy(self) -> float:
        correct = 0
        with evaluation_mode(self.module):
            for batch in self.clean.batches(256):
                x = torch.from_numpy(np.asarray(batch.x, dtype=np.float32)).to(self.device)
                scores = self.module(x).reshape(len(batch.x), -1)
                correct += int((scores.argmax(1).cpu().numpy() == batch.y).sum())
        return correct / len(self.clean)


def maskable_points(inputs: RankingInputs) -> list[PrunePoint]:
    """The candidates a multi-layer criterion ranks: points with at least two channels whose channels
    can be physically removed (mask-only points would not shrink the model and would only be masked)."""
    points = [p for p in inputs.points if p.channels >= 2 and getattr(p, "removable", True)]
    return points or [inputs.default]
