"""Element-wise activations and Softmax/LogSoftmax."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fp_onnx.converters.registry import converter


def _unary(op_type: str, fn, since: int = 1) -> None:
    converter(op_type, since=since)(lambda node: fn)


_unary("Relu", torch.relu)
_unary("Sigmoid", torch.sigmoid)
_unary("Tanh", torch.tanh)
_unary("Erf", torch.erf)
_unary("Softplus", F.softplus)
_unary("Softsign", F.softsign)
_unary("HardSwish", F.hardswish, since=14)  # alpha = 1/6, beta = 0.5 fixed by the spec


@converter("Mish", since=18)
def mish(node):
    return F.mish


@converter("ThresholdedRelu", since=10)
def thresholded_relu(node):
    alpha = node.attr("alpha", 1.0)
    return lambda x: torch.where(x > alpha, x, torch.zeros_like(x))


@converter("LpNormalization")
def lp_normalization(node):
    """x / ||x||_p along `axis` (no epsilon, as the spec: zero vectors give NaN in both runtimes)."""
    axis, p = node.attr("axis", -1), node.attr("p", 2)
    return lambda x: x / torch.linalg.vector_norm(x, ord=p, dim=axis, keepdim=True)


@converter("LeakyRelu")
def leaky_relu(node):
    alpha = node.attr("alpha", 0.01)
    return lambda x: F.leaky_relu(x, alpha)


@converter("PRelu", params=(1,))
def prelu(node):
    # The slope broadcasts unidirectionally (often shape [C,1,1]); F.prelu wants [C].
    return lambda x, slope: torch.where(x < 0, x * slope, x)


@converter("Elu")
def elu(node):
    alpha = node.attr("alpha", 1.0)
    return lambda x: F.elu(x, alpha)


@converter("Selu")
def selu(node):
    alpha = node.attr("alpha", 1.67326319217681884765625)
    gamma = node.attr("gamma", 1.05070102214813232421875)
    return lambda x: gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


@converter("Celu", since=12)
def celu(node):
    alpha = node.attr("alpha", 1.0)
    return lambda x: F.celu(x, alpha)


@converter("HardSigmoid")
def hard_sigmoid(node):
    alpha, beta = node.attr("alpha", 0.2), node.attr("beta", 0.5)
    return lambda x: torch.clamp(alpha * x + beta, 0.0, 1.0)


@converter("Gelu", since=20)
def gelu(node):
    approximate = node.attr("approximate", "none")
    return lambda x: F.gelu(x, approximate=approximate)


@converter("Clip", until=10)
def clip_attributes(node):
    low, high = node.attr("min", -math.inf), node.attr("max", math.inf)
    return lambda x: torch.clamp(x, low, high)


@converter("Clip", since=11)
def clip_inputs(node):
    def run(x, low=None, high=None):
        if low is not None:
            x = torch.maximum(x, low.to(x.dtype))
        if high is not None:
            x = torch.minimum(x, high.to(x.dtype))
        return x

    return run


def _softmax_family(op_type: str, fn) -> None:
    @converter(op_type, until=12)
    def flattening(node):
        """Before opset 13 the input is coerced to 2-D at `axis` and normalised over the flattened tail."""
        axis = node.attr("axis", 1)

        def run(x):
            start = axis + x.dim() if axis < 0 else axis
            return fn(x.flatten(start) if start > 0 else x.reshape(1, -1), -1).reshape(x.shape)

        return run

    @converter(op_type, since=13)
    def per_axis(node):
        axis = node.attr("axis", -1)
        return lambda x: fn(x, axis)


_softmax_family("Softmax", torch.softmax)
_softmax_family("LogSoftmax", torch.log_softmax)
