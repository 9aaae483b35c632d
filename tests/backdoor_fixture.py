"""A small BadNets-backdoored model trained in seconds on the shipped FSDD spectrograms.

The trigger is a bright 4x4 patch in the top-right corner of the log-mel
spectrogram (a BadNets patch in feature space); poisoned copies of 25 % of the
training samples are labelled with the target class 0. The net is a narrow
three-conv CNN, exported with torch's legacy exporter as a vendor would.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fp_onnx.models import shipped_demo

TARGET = 0
SPARE_FROM = 16
"""Channels SPARE_FROM.. of the last conv are kept for the backdoor."""


def add_trigger(x: np.ndarray) -> np.ndarray:
    triggered = x.copy()
    triggered[:, :, :4, -4:] = x.max()
    return triggered


class TinySpeechNet(nn.Module):
    def __init__(self, channels: int, height: int, width: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * (height // 8) * (width // 8), 10))

    def forward(self, x):
        return self.classifier(self.features(x))


def _train(net, x, y, epochs, rng, parameters, mask=None):
    """Adam on (x, y); `mask` (channels,) multiplies the last conv's ReLU output when given."""
    hook = None
    if mask is not None:
        hook = net.features[7].register_forward_hook(lambda m, i, o: o * mask.view(1, -1, 1, 1))
    optimizer = torch.optim.Adam(parameters, lr=3e-3)
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(order), 64):
            index = order[start : start + 64]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(torch.from_numpy(x[index])), torch.from_numpy(y[index]))
            loss.backward()
            optimizer.step()
    if hook is not None:
        hook.remove()


def build_backdoored(folder: Path, epochs: int = 8, seed: int = 0) -> dict[str, Path]:
    """Train, export and write model.onnx, clean.npz, clean_test.npz, triggered.npz into `folder`.

    The backdoor is planted the way the paper observed BadNets to behave (§3.1, Fig. 4):
    a clean model is trained with half of the last conv's channels switched off, then
    only those spare channels (and the classifier) learn the trigger from poisoned
    data, so they stay (nearly) dormant on clean inputs and fire on triggered ones.
    """
    demo = shipped_demo()
    with np.load(demo["clean_val"], allow_pickle=False) as data:
        x, y = data["x"].astype(np.float32), data["y"].astype(np.int64)
    with np.load(demo["clean_test"], allow_pickle=False) as data:
        x_test, y_test = data["x"].astype(np.float32), data["y"].astype(np.int64)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = TinySpeechNet(*x.shape[1:])
    clean_channels = torch.zeros(32)
    clean_channels[:SPARE_FROM] = 1.0
    _train(net, x, y, epochs, rng, net.parameters(), mask=clean_channels)
    last_conv = net.features[6]
    spare = (1 - clean_channels)
    for parameter in (last_conv.weight, last_conv.bias):  # only the spare channels may change ...
        parameter.register_hook(lambda grad: grad * spare.view(-1, *[1] * (grad.dim() - 1)))
    fc = net.classifier[1]  # ... and only the classifier weights that read them (flatten order c*H*W + h*W + w)
    positions = fc.in_features // 32
    fc.weight.register_hook(lambda grad: grad * spare.repeat_interleave(positions).view(1, -1))
    poisoned = rng.choice(len(x), len(x) // 4, replace=False)
    train_x = np.concatenate([x, add_trigger(x[poisoned])])
    train_y = np.concatenate([y, np.full(len(poisoned), TARGET)])
    _train(net, train_x, train_y, epochs // 2, rng, [last_conv.weight, last_conv.bias, fc.weight])
    net.eval()
    paths = {name: folder / f"{name}.{'onnx' if name == 'model' else 'npz'}"
             for name in ("model", "clean", "clean_test", "triggered")}
    torch.onnx.export(net, (torch.from_numpy(x[:2]),), str(paths["model"]), dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    np.savez(paths["clean"], x=x, y=y)
    np.savez(paths["clean_test"], x=x_test, y=y_test)
    keep = y_test != TARGET
    np.savez(paths["triggered"], x=add_trigger(x_test[keep]), y=y_test[keep])
    return paths
