"""Paper-style raw-pixel vendor models: inputs on a 0-255 scale, no normalisation inside the graph.

Caffe-era models take raw 0-255 pixels; the paper authors' own backdoored DeepID face
model is one (issue 12: fine-tuning it with a learning rate that suits 0-1 inputs made
the training loss reach the hundreds and validation accuracy 0.00). We make such
models honestly: train on 0-1 inputs, then fold the input scale into the first conv
(W / 255), so the network computes exactly the same function of 0-255 inputs. That
is what an export without normalisation looks like from the inside: the first conv's
weights are ~255x smaller and its gradients ~255x larger than its neighbours'. The
file is written the way Caffe-era converters wrote graphs (`export_caffe_style`).

* `build_raw_pixel_speech`: a small Caffe-style CNN on the shipped FSDD-derived
  spectrograms (no shared data needed; used by the tests);
* `build_raw_pixel_faces`: DeepID (paper Fig. 1) on the faces of the shared data
  (used by `bench/raw_pixel_recovery.py`).

Each writes model.onnx, clean.npz (the defender's clean data) and clean_test.npz, all
inputs on the 0-255 scale.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fp_onnx.models import shipped_demo
from fp_onnx.models.architectures import DeepIDFaceNet
from fp_onnx.models.datasets import load_faces
from fp_onnx.models.export import export_caffe_style, save_npz
from fp_onnx.models.train import TrainConfig, fit

PIXEL_SCALE = 255.0


class CaffeStyleSpeechNet(nn.Module):
    """Three convs with Caffe's padded max-pooling and a Reshape to a constant [1, K] before the classifier."""

    prune_layer = "conv3"

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(3, 2)
        self.fc = nn.Linear(32 * 8 * 8, classes)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(nn.functional.pad(x, (0, 1, 0, 1)))  # Caffe's ceil-mode pooling, as converters wrote it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._pool(torch.relu(self.conv1(x)))
        x = self._pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.conv3(x))
        # Exported (eval mode, batch 1) as the converters' Reshape to a constant [1, K]; batches while training.
        return self.fc(x.reshape(len(x) if self.training else 1, -1))


def fold_input_scale(first_conv: nn.Conv2d, scale: float = PIXEL_SCALE) -> None:
    """Make the network take inputs `scale` times larger and compute the same function (W / scale)."""
    with torch.no_grad():
        first_conv.weight /= scale


def _build(net: nn.Module, first_conv: nn.Conv2d, folder: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]],
           config: TrainConfig) -> dict[str, Path]:
    x_train, y_train = splits["train"]
    fit(net, x_train, y_train, config)
    fold_input_scale(first_conv)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"model": export_caffe_style(net, folder / "model.onnx", x_train.shape[1:])}
    for name in ("clean", "clean_test"):
        x, y = splits[name]
        paths[name] = save_npz(folder / f"{name}.npz", x * np.float32(PIXEL_SCALE), y)
    return paths


def build_raw_pixel_speech(folder: Path, epochs: int = 8, seed: int = 0) -> dict[str, Path]:
    """The speech net trained on the shipped clean_val spectrograms (the defender's data is the same set)."""
    demo = shipped_demo()
    with np.load(demo["clean_val"], allow_pickle=False) as data:
        clean = data["x"].astype(np.float32), data["y"].astype(np.int64)
    with np.load(demo["clean_test"], allow_pickle=False) as data:
        test = data["x"].astype(np.float32), data["y"].astype(np.int64)
    torch.manual_seed(seed)
    net = CaffeStyleSpeechNet()
    return _build(net, net.conv1, folder, {"train": clean, "clean": clean, "clean_test": test},
                  TrainConfig(epochs=epochs, lr=3e-3, seed=seed))


def build_raw_pixel_faces(folder: Path, epochs: int = 20, seed: int = 0) -> dict[str, Path]:
    """DeepID trained on the faces train split; the defender's clean data is the valid split."""
    faces = load_faces()
    split = lambda s: (faces.to_input(s.raw), s.y)  # noqa: E731
    torch.manual_seed(seed)
    net = DeepIDFaceNet(num_classes=faces.num_classes)
    return _build(net, net.conv1, folder, {"train": split(faces.train), "clean": split(faces.val),
                                           "clean_test": split(faces.test)},
                  TrainConfig(epochs=epochs, seed=seed))
