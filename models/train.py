"""A small, seeded CPU training loop for the attack lab, and activation probes.

`fit` trains on in-memory float32 NCHW arrays with Adam and cross-entropy
(optionally class-balanced). A `channel_mask` zeroes channels of the model's
prune layer during training: that is how the pruning-aware attack (paper §3.2,
step 3) retrains a pruned network without changing its architecture.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from fp_onnx.models.architectures import prune_conv, prune_module


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (written into the model card)."""

    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    balance_classes: bool = False
    seed: int = 0
    # L1 penalty on the prune layer's mean ReLU output (activation sparsity); 0 = off.
    activation_l1: float = 0.0
    # "cpu", "cuda", or "auto" (CUDA when torch sees a GPU); the model returns to the CPU afterwards.
    device: str = "cpu"

    def as_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


@contextlib.contextmanager
def masked_channels(model: nn.Module, mask: np.ndarray | None):
    """Multiply the prune conv's output channels by `mask` (1 keep, 0 pruned) inside the block."""
    if mask is None:
        yield
        return
    weights = torch.as_tensor(mask, dtype=torch.float32).view(1, -1, 1, 1)
    handle = prune_conv(model).register_forward_hook(lambda _m, _i, out: out * weights.to(out.device))
    try:
        yield
    finally:
        handle.remove()


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, config: TrainConfig,
        channel_mask: np.ndarray | None = None) -> dict:
    """Train `model` in place; returns {"seconds", "final_loss"}."""
    seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = training_device(config.device)
    model.to(device)
    inputs, labels = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))
    if device.type == "cuda":
        inputs, labels = inputs.to(device), labels.to(device)
    num_classes = int(y.max()) + 1
    class_weight = None
    if config.balance_classes:
        counts = np.bincount(y, minlength=num_classes).astype(np.float64)
        class_weight = torch.tensor(counts.sum() / (num_classes * np.maximum(counts, 1)), dtype=torch.float32).to(device)
    loss_fn = nn.CrossEntropyLoss(weight=class_weight)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    start, loss = time.perf_counter(), torch.tensor(0.0)
    captured: list[torch.Tensor] = []
    probe = prune_module(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
    model.train()
    try:
        with masked_channels(model, channel_mask):
            for _ in range(config.epochs):
                order = torch.randperm(len(labels), generator=generator).to(device)
                for batch in order.split(config.batch_size):
                    optimizer.zero_grad()
                    captured.clear()
                    loss = loss_fn(model(inputs[batch]), labels[batch])
                    if config.activation_l1:
                        loss = loss + config.activation_l1 * torch.relu(captured[0]).mean()
                    loss.backward()
                    optimizer.step()
                scheduler.step()
    finally:
        probe.remove()
    model.eval()
    model.to("cpu")
    return {"seconds": time.perf_counter() - start, "final_loss": float(loss.detach())}


def training_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256,
            channel_mask: np.ndarray | None = None) -> np.ndarray:
    """Predicted labels (N,) int64 for float32 NCHW inputs."""
    model.eval()
    out = []
    with masked_channels(model, channel_mask):
        for start in range(0, len(x), batch_size):
            out.append(model(torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size]))).argmax(1))
    return torch.cat(out).numpy().astype(np.int64)


@torch.no_grad()
def prune_layer_outputs(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Pre-ReLU outputs of the prune conv, reduced per sample and channel: (N, C) spatial max
    and the post-ReLU spatial mean, stacked as (2, N, C)."""
    model.eval()
    captured: list[torch.Tensor] = []
    handle = prune_module(model).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        maxima, means = [], []
        for start in range(0, len(x), batch_size):
            captured.clear()
            model(torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])))
            pre = captured[0]
            maxima.append(pre.amax(dim=(2, 3)))
            means.append(torch.relu(pre).mean(dim=(2, 3)))
    finally:
        handle.remove()
    return torch.stack([torch.cat(maxima), torch.cat(means)]).numpy()


def mean_activation(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Mean post-ReLU activation of each prune-layer channel over `x` (paper §3.1), shape (C,)."""
    return prune_layer_outputs(model, x)[1].mean(axis=0)
