"""The three networks of the paper (§2.3, Figs. 1-3), sized for the stand-in datasets.

Every net uses ReLU after each conv, so a channel can be *dormant* (mean
activation ~0 on clean inputs): that is what BadNets backdoors exploit and what
the pruning defense removes (paper §3.1). Each class names its `prune_layer`,
the conv the paper prunes (conv3 for DeepID, conv5 for AlexNet and the traffic
net), so the attack lab and the benchmarks agree on it.

All nets take NCHW float32 and return logits (no softmax), and use only ops a
vendor's ONNX export keeps simple: Conv, Relu, MaxPool, Flatten, Gemm, Add.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def _conv_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0,
               batch_norm: bool = False) -> nn.Sequential:
    """Conv -> [BatchNorm] -> ReLU. The ONNX export (eval mode) folds BatchNorm into the Conv."""
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=padding)
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch), nn.ReLU()) if batch_norm else nn.Sequential(conv, nn.ReLU())


class DeepIDFaceNet(nn.Module):
    """DeepID after the paper's Fig. 1 (and the CSAW-HackML model), input 3x55x47.

    conv1 4x4/20 -> pool -> conv2 3x3/40 -> pool -> conv3 3x3/60 -> pool3;
    conv4 2x2/80 on pool3. Two FC-160 layers, one on flattened pool3 and one on
    flattened conv4, are added, passed through ReLU, then the class layer.
    """

    prune_layer = "conv3"
    input_shape = (3, 55, 47)

    def __init__(self, num_classes: int = 21, widths: tuple[int, int, int, int] = (20, 40, 60, 80)) -> None:
        super().__init__()
        c1, c2, c3, c4 = widths
        self.conv1 = nn.Conv2d(3, c1, 4)
        self.conv2 = nn.Conv2d(c1, c2, 3)
        self.conv3 = nn.Conv2d(c2, c3, 3)
        self.conv4 = nn.Conv2d(c3, c4, 2)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        # 55x47 -> conv1 52x44 -> 26x22 -> conv2 24x20 -> 12x10 -> conv3 10x8 -> 5x4 -> conv4 4x3
        self.fc_pool3 = nn.Linear(c3 * 5 * 4, 160)
        self.fc_conv4 = nn.Linear(c4 * 4 * 3, 160)
        self.classifier = nn.Linear(160, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        pool3 = self.pool(self.relu(self.conv3(x)))
        conv4 = self.relu(self.conv4(pool3))
        merged = self.fc_pool3(torch.flatten(pool3, 1)) + self.fc_conv4(torch.flatten(conv4, 1))
        return self.classifier(self.relu(merged))


class AlexNetSpeechNet(nn.Module):
    """AlexNet-style spectrogram classifier (paper Fig. 2): five convs, three FC layers.

    conv1 (stride `conv1_stride`) -> pool -> conv2 -> pool -> conv3 -> conv4 ->
    conv5 -> pool -> fc6 -> fc7 -> fc8. With a 32x32 input and stride 1 (or a
    64x64 input and stride 2) the conv5 map is 8x8. `global_pool` max-pools it
    to 1x1 (one MaxPool over the whole map) instead of 4x4: fc6 then sees *which*
    channels fired, not where, so a trigger must be recognised by channels of
    its own, and those stay dormant on clean speech (paper §3.1, Fig. 4).
    `batch_norm` adds BatchNorm to conv1-conv4 (it makes training on 2,000
    spectrograms stable); conv5, the prune layer, never gets one, so its ReLU
    outputs keep their raw scale and channels can be dormant.
    """

    prune_layer = "conv5"

    def __init__(
        self,
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = (1, 32, 32),
        widths: tuple[int, int, int, int, int] = (16, 32, 48, 48, 64),
        fc_width: int = 128,
        conv1_stride: int = 1,
        dropout: float = 0.3,
        global_pool: bool = False,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.input_shape = input_shape
        c1, c2, c3, c4, c5 = widths
        bn = batch_norm
        self.conv1 = _conv_relu(input_shape[0], c1, 3, stride=conv1_stride, padding=1, batch_norm=bn)
        self.conv2 = _conv_relu(c1, c2, 3, padding=1, batch_norm=bn)
        self.conv3 = _conv_relu(c2, c3, 3, padding=1, batch_norm=bn)
        self.conv4 = _conv_relu(c3, c4, 3, padding=1, batch_norm=bn)
        self.conv5 = _conv_relu(c4, c5, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        height, width = input_shape[1] // conv1_stride // 4, input_shape[2] // conv1_stride // 4
        self.pool5 = nn.MaxPool2d((height, width)) if global_pool else nn.MaxPool2d(2)
        height, width = (1, 1) if global_pool else (height // 2, width // 2)
        self.fc6 = nn.Linear(c5 * height * width, fc_width)
        self.fc7 = nn.Linear(fc_width, fc_width // 2)
        self.fc8 = nn.Linear(fc_width // 2, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv1(x))
        x = self.pool(self.conv2(x))
        x = self.pool5(self.conv5(self.conv4(self.conv3(x))))
        x = self.dropout(torch.relu(self.fc6(torch.flatten(x, 1))))
        x = self.dropout(torch.relu(self.fc7(x)))
        return self.fc8(x)


class TrafficSignNet(nn.Module):
    """Plain CNN for 32x32 GTSRB signs, standing in for the paper's F-RCNN (Fig. 3).

    The paper's detector (Faster R-CNN on LISA) needs full scenes with boxes, which
    we do not have; the classifier part is what the defense prunes, so a plain CNN
    with a conv5 and three FC layers keeps the experiment's shape.
    """

    prune_layer = "conv5"
    input_shape = (3, 32, 32)

    def __init__(
        self,
        num_classes: int = 3,
        widths: tuple[int, int, int, int, int] = (32, 32, 64, 64, 96),
        fc_width: int = 256,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = widths
        self.conv1 = _conv_relu(3, c1, 3, padding=1)
        self.conv2 = _conv_relu(c1, c2, 3, padding=1)
        self.conv3 = _conv_relu(c2, c3, 3, padding=1)
        self.conv4 = _conv_relu(c3, c4, 3, padding=1)
        self.conv5 = _conv_relu(c4, c5, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc6 = nn.Linear(c5 * 4 * 4, fc_width)
        self.fc7 = nn.Linear(fc_width, fc_width // 2)
        self.fc8 = nn.Linear(fc_width // 2, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv2(self.conv1(x)))   # 16x16
        x = self.pool(self.conv4(self.conv3(x)))   # 8x8
        x = self.pool(self.conv5(x))               # 4x4
        x = self.dropout(torch.relu(self.fc6(torch.flatten(x, 1))))
        x = self.dropout(torch.relu(self.fc7(x)))
        return self.fc8(x)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 conv+BN, a projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class PreActBlock(nn.Module):
    """Pre-activation block (He et al. 2016b), as in BackdoorBench's PreAct-ResNet18."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.short = None
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.short(out) if self.short is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


class ResNet(nn.Module):
    """A CIFAR-style ResNet for 3x32x32 inputs: 3x3 stem, four stages, global average pool, one FC.

    `blocks=(1, 1, 1, 1)` with BasicBlock is the ResNet-10 of the issue's GTSRB
    model; `blocks=(2, 2, 2, 2)` with PreActBlock and width 64 is BackdoorBench's
    PreAct-ResNet18. The prune layer is the output of the last stage, the feature
    map the classifier reads (for PreAct nets after the final BN+ReLU).
    """

    prune_layer = "features"
    input_shape = (3, 32, 32)

    def __init__(self, num_classes: int = 43, width: int = 16, blocks: tuple[int, ...] = (1, 1, 1, 1),
                 preact: bool = False) -> None:
        super().__init__()
        block = PreActBlock if preact else BasicBlock
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, 1, 1, bias=False)]
        if not preact:
            layers += [nn.BatchNorm2d(width), nn.ReLU()]
        cin = width
        for stage, count in enumerate(blocks):
            cout = width * 2 ** stage
            for i in range(count):
                layers.append(block(cin, cout, 2 if stage and i == 0 else 1))
                cin = cout
        if preact:
            layers += [nn.BatchNorm2d(cin), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def prune_conv(model: nn.Module) -> nn.Conv2d:
    """The nn.Conv2d named by `model.prune_layer` (unwrapping a conv+ReLU block)."""
    layer = getattr(model, model.prune_layer)
    if isinstance(layer, nn.Sequential):
        layer = layer[0]
    if not isinstance(layer, nn.Conv2d):
        raise TypeError(f"{type(model).__name__}.{model.prune_layer} is not a Conv2d")
    return layer


def prune_module(model: nn.Module) -> nn.Module:
    """What activation probes hook: the prune conv of a plain net (its output is pre-ReLU), or the
    whole prune layer of a residual net (its output is the block output the classifier reads)."""
    layer = getattr(model, model.prune_layer)
    if isinstance(layer, nn.Sequential) and isinstance(layer[0], nn.Conv2d) and len(layer) <= 3:
        return layer[0]
    return layer


@dataclass(frozen=True)
class ArchitectureSpec:
    """How to build a task's network, recorded in the model card."""

    name: str
    kwargs: dict

    def build(self) -> nn.Module:
        return ARCHITECTURES[self.name](**self.kwargs)


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "deepid_face": DeepIDFaceNet,
    "alexnet_speech": AlexNetSpeechNet,
    "traffic_cnn": TrafficSignNet,
    "resnet": ResNet,
}
