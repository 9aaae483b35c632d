"""BatchNormalization, InstanceNormalization, LayerNormalization and LRN."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fp_onnx.converters.registry import converter
from fp_onnx.errors import UnsupportedOpError


class BatchNorm(torch.nn.Module):
    """ONNX BatchNormalization with torch train/eval semantics.

    eval(): y = scale * (x - mean) / sqrt(var + eps) + B with the stored statistics
    (ONNX inference mode). train(): normalise with batch statistics and update the
    running buffers in place. ONNX momentum m means running = m * running + (1 - m) * batch,
    so torch's momentum is 1 - m. torch updates running_var with the unbiased batch
    variance (as torch.nn.BatchNorm does).
    """

    def __init__(self, epsilon: float, momentum: float):
        super().__init__()
        self.epsilon = epsilon
        self.torch_momentum = 1.0 - momentum

    def forward(self, x, scale, bias, mean, var):
        return F.batch_norm(x, mean, var, scale, bias, self.training, self.torch_momentum, self.epsilon)


@converter("BatchNormalization", params=(1, 2), buffers=(3, 4))
def batch_normalization(node):
    if node.attr("spatial", 1) == 0:  # opsets < 9: one statistic per activation, not per channel
        raise UnsupportedOpError(f"{node.describe()}: BatchNormalization with spatial=0 is not supported")
    return BatchNorm(node.attr("epsilon", 1e-5), node.attr("momentum", 0.9))


@converter("InstanceNormalization", params=(1, 2))
def instance_normalization(node):
    epsilon = node.attr("epsilon", 1e-5)

    def run(x, scale, bias):
        return F.instance_norm(x, weight=scale, bias=bias, eps=epsilon)

    return run


@converter("LayerNormalization", since=17, params=(1, 2))
def layer_normalization(node):
    """Normalise over axes [axis, rank); Scale and B broadcast against that trailing shape."""
    epsilon, axis = node.attr("epsilon", 1e-5), node.attr("axis", -1)

    def run(x, scale, bias=None):
        start = axis + x.dim() if axis < 0 else axis
        normalized_shape = tuple(x.shape[start:])
        weight = scale.expand(normalized_shape) if tuple(scale.shape) != normalized_shape else scale
        if bias is not None and tuple(bias.shape) != normalized_shape:
            bias = bias.expand(normalized_shape)
        return F.layer_norm(x, normalized_shape, weight, bias, epsilon)

    return run


@converter("LRN")
def lrn(node):
    """y = x / (bias + alpha / size * sum of x^2 over the channel window)^beta.

    The window spans channels [c - floor((size-1)/2), c + ceil((size-1)/2)] (ONNX LRN
    spec); torch's local_response_norm centres even windows the other way, so we
    compute the window sum ourselves.
    """
    size, alpha = node.attr("size"), node.attr("alpha", 1e-4)
    beta, bias = node.attr("beta", 0.75), node.attr("bias", 1.0)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2

    def run(x):
        squares = (x * x).reshape(x.shape[0], 1, x.shape[1], -1)
        squares = F.pad(squares, (0, 0, before, after))
        window_sum = F.avg_pool2d(squares, (size, 1), stride=1) * size
        return x / (bias + alpha / size * window_sum.reshape(x.shape)) ** beta

    return run
