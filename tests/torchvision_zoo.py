"""torchvision classifiers for the real-exporter zoo (a test-only dependency).

The torchvision 0.28.0 wheel (the release paired with torch 2.13) is built against
CUDA torch: under the CPU build its compiled ops do not load and `import
torchvision` fails in `torchvision/_meta_registrations.py`, which registers fake
kernels for `torchvision::nms` and `torchvision::qnms` at import time. Declaring
those two op schemas with `torch.library` first (the schemas of the ops, no
kernel) lets the import go through; the model definitions are pure Python and do
not need the compiled ops. See docs/decisions.md ("torchvision in the tests").

Every model is built with random weights, then its biases, BatchNorm statistics,
norm affines and ConvNeXt layer scales are randomised too: default init makes
BN an identity and zero biases, which makes the TorchScript exporter deduplicate
equal constants and makes outputs nearly input-independent. One default-init
model per exporter (`DEFAULT_INIT`) keeps that deduplication path covered.
"""
from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

NUM_CLASSES = 10
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None


def available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def models():
    """`torchvision.models`, importable under CPU torch (see the module docstring)."""
    global _library
    try:
        import torchvision.models
    except RuntimeError as error:
        if "torchvision::" not in str(error) or _library is not None:
            raise
        for module in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[module]  # the failed import left half-initialised modules behind
        _library = torch.library.Library("torchvision", "DEF")  # schemas only; kept alive for the session
        for schema in _SCHEMAS.values():
            _library.define(schema)
        import torchvision.models
    return torchvision.models


@dataclass(frozen=True)
class Classifier:
    build: Callable[[], nn.Module]
    size: int  # input height = width
    feature_module: str  # the module whose output the classifier head reads


def _vgg11_bn() -> nn.Module:
    """torchvision's vgg11_bn with its feature extractor unchanged. Its head pools to 7x7 and reads
    25,088 features into a 4,096-wide MLP: the legacy exporter only exports that adaptive pool when
    the input is 224x224 (515 MB of weights). At 32x32 the features are 512x1x1, so the head here
    keeps VGG's layer sequence (pool, Linear-ReLU-Dropout twice, Linear) at 1x1 and width 256."""
    net = models().vgg11_bn(num_classes=NUM_CLASSES)
    net.avgpool = nn.AdaptiveAvgPool2d(1)
    net.classifier = nn.Sequential(nn.Linear(512, 256), nn.ReLU(True), nn.Dropout(), nn.Linear(256, 256),
                                   nn.ReLU(True), nn.Dropout(), nn.Linear(256, NUM_CLASSES))
    return net


def _named(name: str, **kwargs) -> Callable[[], nn.Module]:
    return lambda: getattr(models(), name)(num_classes=NUM_CLASSES, **kwargs)


CLASSIFIERS: dict[str, Classifier] = {
    "resnet18": Classifier(_named("resnet18"), 64, "layer4"),
    "resnet50": Classifier(_named("resnet50"), 64, "layer4"),
    "mobilenet_v2": Classifier(_named("mobilenet_v2", width_mult=0.5), 64, "features"),
    "mobilenet_v3_small": Classifier(_named("mobilenet_v3_small", width_mult=0.5), 64, "features"),
    "efficientnet_b0": Classifier(_named("efficientnet_b0"), 64, "features"),
    "regnet_y_400mf": Classifier(_named("regnet_y_400mf"), 64, "trunk_output"),
    "convnext_tiny": Classifier(_named("convnext_tiny"), 64, "features"),
    "densenet121": Classifier(_named("densenet121"), 64, "features"),
    "shufflenet_v2_x0_5": Classifier(_named("shufflenet_v2_x0_5"), 64, "conv5"),
    "squeezenet1_1": Classifier(_named("squeezenet1_1"), 64, "features"),
    "googlenet": Classifier(_named("googlenet", aux_logits=False, init_weights=True), 64, "inception5b"),
    "vgg11_bn": Classifier(_vgg11_bn, 32, "features"),
}
DEFAULT_INIT = "resnet18"  # exported once per exporter with torchvision's own initialisation


def build(name: str, *, randomise: bool = True, seed: int = 0) -> nn.Module:
    """The classifier in eval mode, seeded; `randomise` also draws biases, BN statistics, norm
    affines and layer scales (see the module docstring)."""
    torch.manual_seed(seed)
    net = CLASSIFIERS[name].build()
    if randomise:
        _randomise_constants(net)
    return net.eval()


def _randomise_constants(net: nn.Module) -> None:
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "layer_scale" or (leaf == "weight" and parameter.ndim == 1):
                parameter.uniform_(0.5, 1.5)  # norm scales, ConvNeXt layer scales
            elif leaf == "bias":
                parameter.uniform_(-0.2, 0.2)
        for name, buffer in net.named_buffers():
            if name.endswith("running_mean"):
                buffer.uniform_(-0.2, 0.2)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
