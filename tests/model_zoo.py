"""The test model zoo: small versions of the architectures fp-onnx must handle.

Every torch architecture keeps the real topology of its namesake (residual Adds,
depthwise convs, dense Concats, Fire modules, DeepID's merged branches) but with
narrow channels and small inputs so the suite stays fast. Weights are random but
seeded; BatchNorm statistics are randomised too, so BN folding and BN surgery are
exercised with non-trivial numbers (default statistics would also make the
legacy exporter deduplicate the BN initializers into Identity nodes).

Two more graphs are built with `onnx.helper` for exporter styles torch does not
produce: a tf2onnx/Keras NHWC graph and an old Caffe-era converter graph.

Use `export_torch` (or the session fixtures in conftest.py, which cache one
export per (architecture, exporter) pair) and `load_for_tests`, which emulates
what `fp_onnx.loading.load_model` guarantees.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

Exporter = Literal["legacy", "dynamo"]
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
NUM_CLASSES = 10


# --------------------------------------------------------------------------- AlexNet / VGG-style
class AlexNet(nn.Module):
    """AlexNet topology (5 convs, 3 max-pools, 3 FC) at CIFAR scale, narrow."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 12, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 20, 3, padding=1), nn.ReLU(),
            nn.Conv2d(20, 20, 3, padding=1), nn.ReLU(),
            nn.Conv2d(20, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(), nn.Linear(16 * 4 * 4, 48), nn.ReLU(),
            nn.Dropout(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# --------------------------------------------------------------------------- DeepID (paper Fig. 1)
class DeepID(nn.Module):
    """DeepID face net: the pooled conv3 output feeds both a FC and conv4; the FCs are added."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 4), nn.Conv2d(8, 12, 3)
        self.conv3, self.conv4 = nn.Conv2d(12, 16, 3), nn.Conv2d(16, 20, 2)
        self.pool = nn.MaxPool2d(2)
        self.fc_conv3 = nn.Linear(16 * 5 * 4, 32)  # pool3 output: 16 x 5 x 4
        self.fc_conv4 = nn.Linear(20 * 4 * 3, 32)  # conv4 output: 20 x 4 x 3
        self.classifier = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        pool3 = self.pool(torch.relu(self.conv3(x)))
        conv4 = torch.relu(self.conv4(pool3))
        merged = self.fc_conv3(torch.flatten(pool3, 1)) + self.fc_conv4(torch.flatten(conv4, 1))
        return self.classifier(torch.relu(merged))


# --------------------------------------------------------------------------- ResNet-18
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """ResNet-18 topology: 7x7 stem, max-pool, 4 stages of 2 BasicBlocks, global pool, FC."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2 ** i
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


# --------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 topology: depthwise convs, ReLU6 (exported as Clip), inverted residuals."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6()]
        cin = 8
        for expand, cout, repeats, stride in ((1, 8, 1, 1), (4, 12, 2, 2), (4, 16, 2, 2)):
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers += [nn.Conv2d(cin, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------- DenseNet-121-style
class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, bn_size * growth, 1, bias=False),
            nn.BatchNorm2d(bn_size * growth), nn.ReLU(), nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):
    """DenseNet-121 topology (pre-activation dense layers concatenated, transitions), 2 blocks of 2."""

    def __init__(self, growth: int = 4) -> None:
        super().__init__()
        c = 8
        layers: list[nn.Module] = [nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                   nn.MaxPool2d(2)]
        for block in range(2):
            for _ in range(2):
                layers.append(DenseLayer(c, growth))
                c += growth
            if block == 0:
                layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.fc(torch.flatten(x, 1))


# --------------------------------------------------------------------------- SqueezeNet
class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.squeeze(x))
        return torch.cat([torch.relu(self.expand1x1(s)), torch.relu(self.expand3x3(s))], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1 topology: Fire modules (Concat), conv classifier -> ReLU -> global pool -> Flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(16, 4, 8), Fire(16, 4, 8), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(16, 6, 12),
        )
        self.classifier = nn.Sequential(nn.Dropout(), nn.Conv2d(24, NUM_CLASSES, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


# --------------------------------------------------------------------------- unfused BatchNorm
class ConvBNNet(nn.Module):
    """Conv -> BN -> ReLU stacks; exported so the BatchNormalization nodes survive (see `keeps_batchnorm`)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(12, 16, 3, padding=1), nn.BatchNorm2d(16), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(16 * 8 * 8, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


@dataclass(frozen=True)
class Architecture:
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # without the batch dim
    exporters: tuple[Exporter, ...]  # which exporters the tests use for it
    keeps_batchnorm: bool = False  # export so BatchNormalization nodes stay (legacy, TrainingMode.PRESERVE)


# DenseNet and SqueezeNet use the legacy exporter only: each dynamo export costs
# 5-20 s here, and their Concat patterns do not differ between exporters.
ARCHITECTURES: dict[str, Architecture] = {
    "alexnet": Architecture(AlexNet, (3, 32, 32), ("legacy", "dynamo")),
    "deepid": Architecture(DeepID, (3, 55, 47), ("legacy", "dynamo")),
    "resnet18": Architecture(ResNet18, (3, 32, 32), ("legacy", "dynamo")),
    "mobilenetv2": Architecture(MobileNetV2, (3, 32, 32), ("legacy", "dynamo")),
    "densenet": Architecture(DenseNet, (3, 32, 32), ("legacy",)),
    "squeezenet": Architecture(SqueezeNet, (3, 32, 32), ("legacy",)),
    "convbn": Architecture(ConvBNNet, (3, 32, 32), ("legacy",), keeps_batchnorm=True),
}


def build_module(arch: str, seed: int = 0) -> nn.Module:
    """The architecture with seeded random weights and random BN statistics, in eval mode."""
    torch.manual_seed(seed)
    module = ARCHITECTURES[arch].build()
    with torch.no_grad():
        for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return module.eval()


def export_torch(module: nn.Module, path: Path, exporter: Exporter, batch: int = 2,
                 input_shape: tuple[int, ...] | None = None, keep_batchnorm: bool = False) -> Path:
    """Export `module` to `path` with input "input", output "logits" and a dynamic batch axis.

    `input_shape` (without batch) defaults to the zoo entry's shape when `module` is a zoo class.
    `keep_batchnorm` exports in TrainingMode.PRESERVE without constant folding (legacy exporter),
    so BatchNormalization nodes are not fused into the convs.
    """
    if input_shape is None:
        shapes = [a.input_shape for a in ARCHITECTURES.values() if isinstance(module, a.build)]
        if not shapes:
            raise ValueError(f"{type(module).__name__} is not a zoo architecture; pass input_shape")
        input_shape = shapes[0]
    example = (torch.randn(batch, *input_shape),)
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            extra = {}
            if keep_batchnorm:
                extra = {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
            torch.onnx.export(module, example, str(path), dynamo=False, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **extra)
        else:
            torch.onnx.export(module, example, str(path), dynamo=True, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},),
                              verbose=False)
    return path


def export_zoo(arch: str, exporter: Exporter, folder: Path) -> Path:
    """Export the seeded zoo architecture `arch` into `folder` (one file per exporter)."""
    spec = ARCHITECTURES[arch]
    return export_torch(build_module(arch), Path(folder) / f"{arch}_{exporter}.onnx", exporter,
                        input_shape=spec.input_shape, keep_batchnorm=spec.keeps_batchnorm)


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed (or duplicate-named) node a name `<op_type>_<index>`, like load_model does."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
    return model


def load_for_tests(path: Path | str) -> onnx.ModelProto:
    """Emulate fp_onnx.loading.load_model: external data loaded, checked, shapes inferred, nodes named."""
    return load_for_tests_proto(onnx.load(str(path)))


def load_for_tests_proto(model: onnx.ModelProto) -> onnx.ModelProto:
    """`load_for_tests` for an in-memory model."""
    onnx.checker.check_model(model)
    return name_nodes(onnx.shape_inference.infer_shapes(model))


def random_input(model: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 feeds for every real (non-initializer) graph input, with `batch` for symbolic dims."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


# --------------------------------------------------------------------------- helper-built graphs
def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(array, name)


def build_keras_nhwc_model(seed: int = 0) -> onnx.ModelProto:
    """A tf2onnx-style Keras graph: NHWC input, layout Transposes around the convs, Reshape -> MatMul + Add.

    input [N,32,32,3] -> Transpose(0,3,1,2) -> Conv(8) -> Relu -> MaxPool -> Conv(12) -> Relu
    -> Transpose(0,2,3,1) -> Reshape(-1, 16*16*12) -> MatMul -> Add -> Softmax.
    The last conv's channels therefore sit on axis 3 of the flattened tensor: flat index (h*W + w)*C + c.
    """
    rng = np.random.default_rng(seed)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.3  # noqa: E731
    inits = [
        _init("conv1/kernel", f32(8, 3, 3, 3)), _init("conv1/bias", f32(8)),
        _init("conv2/kernel", f32(12, 8, 3, 3)), _init("conv2/bias", f32(12)),
        _init("flatten/shape", np.array([-1, 16 * 16 * 12], np.int64)),
        _init("dense/kernel", f32(16 * 16 * 12, NUM_CLASSES) * 0.1), _init("dense/bias", f32(NUM_CLASSES)),
    ]
    nodes = [
        helper.make_node("Transpose", ["input_1"], ["to_nchw"], "transpose_in", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["to_nchw", "conv1/kernel", "conv1/bias"], ["conv1"], "model/conv1/Conv2D",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"], "model/conv1/Relu"),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], "model/pool1/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "conv2/kernel", "conv2/bias"], ["conv2"], "model/conv2/Conv2D",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"], "model/conv2/Relu"),
        helper.make_node("Transpose", ["relu2"], ["to_nhwc"], "model/conv2/Relu__transpose", perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["to_nhwc", "flatten/shape"], ["flat"], "model/flatten/Reshape"),
        helper.make_node("MatMul", ["flat", "dense/kernel"], ["dense_mm"], "model/dense/MatMul"),
        helper.make_node("Add", ["dense_mm", "dense/bias"], ["dense"], "model/dense/BiasAdd"),
        helper.make_node("Softmax", ["dense"], ["dense_softmax"], "model/dense/Softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "keras_model",
        [helper.make_tensor_value_info("input_1", TensorProto.FLOAT, ["unk__0", 32, 32, 3])],
        [helper.make_tensor_value_info("dense_softmax", TensorProto.FLOAT, ["unk__1", NUM_CLASSES])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tf2onnx",
                              producer_version="1.16.1")
    model.ir_version = 7
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def build_caffe_style_model(seed: int = 0) -> onnx.ModelProto:
    """An old Caffe-era converter graph (opset 9): initializers also listed as graph inputs, Pad before
    MaxPool, fixed batch 1, Reshape to a constant [1, K], Softmax output "prob"."""
    rng = np.random.default_rng(seed)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.3  # noqa: E731
    flat = 16 * 8 * 8
    inits = [
        _init("conv1_w", f32(12, 3, 3, 3)), _init("conv1_b", f32(12)),
        _init("conv2_w", f32(16, 12, 3, 3)), _init("conv2_b", f32(16)),
        _init("flatten_shape", np.array([1, flat], np.int64)),
        _init("fc1_w", f32(32, flat) * 0.1), _init("fc1_b", f32(32)),
        _init("fc2_w", f32(NUM_CLASSES, 32)), _init("fc2_b", f32(NUM_CLASSES)),
    ]
    nodes = [
        helper.make_node("Conv", ["data", "conv1_w", "conv1_b"], ["conv1"], "conv1", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"], "relu1"),
        helper.make_node("Pad", ["relu1"], ["pad1"], "pad1", pads=[0, 0, 0, 0, 0, 0, 1, 1], mode="constant"),
        helper.make_node("MaxPool", ["pad1"], ["pool1"], "pool1", kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "conv2_w", "conv2_b"], ["conv2"], "conv2", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"], "relu2"),
        helper.make_node("Pad", ["relu2"], ["pad2"], "pad2", pads=[0, 0, 0, 0, 0, 0, 1, 1], mode="constant"),
        helper.make_node("MaxPool", ["pad2"], ["pool2"], "pool2", kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Reshape", ["pool2", "flatten_shape"], ["flatten"], "flatten"),
        helper.make_node("Gemm", ["flatten", "fc1_w", "fc1_b"], ["fc1"], "fc1", transB=1),
        helper.make_node("Relu", ["fc1"], ["relu3"], "relu3"),
        helper.make_node("Gemm", ["relu3", "fc2_w", "fc2_b"], ["fc2"], "fc2", transB=1),
        helper.make_node("Softmax", ["fc2"], ["prob"], "prob"),
    ]
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 32, 32])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    graph = helper.make_graph(nodes, "caffe_net", inputs,
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, NUM_CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], producer_name="caffe2onnx")
    model.ir_version = 4
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


HELPER_MODELS = ("keras_nhwc", "caffe")


def zoo_cases() -> list[tuple[str, str]]:
    """Every (model name, exporter) pair the tests cover: torch architectures with their exporters,
    then the helper-built graphs (exporter "helper")."""
    cases = [(arch, exporter) for arch, spec in ARCHITECTURES.items() for exporter in spec.exporters]
    return cases + [(name, "helper") for name in HELPER_MODELS]
