"""MaxPool, AveragePool (with dilations, ceil_mode, count_include_pad), global pools."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fp_onnx.converters.ops.common import pad_spatial, spatial_attrs, spatial_pads, symmetric
from fp_onnx.converters.registry import converter
from fp_onnx.errors import UnsupportedOpError

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _output_size(size, kernel, stride, dilation, begin, end, ceil_mode):
    """ONNX pooling output length; with ceil_mode a window that starts in the end padding is dropped."""
    span = size + begin + end - ((kernel - 1) * dilation + 1)
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + begin:
        out -= 1
    return out


def _native_padding(pads, kernel, dilations):
    """Symmetric pads torch's pooling accepts (at most half the effective kernel), else None."""
    padding = symmetric(pads)
    if padding is None:
        return None
    if any(p > ((k - 1) * d + 1) // 2 for p, k, d in zip(padding, kernel, dilations)):
        return None
    return padding


def _crop(y, sizes):
    for axis, size in enumerate(sizes):
        y = y.narrow(2 + axis, 0, size)
    return y


def _window(node, x, ceil_mode: bool):
    """Kernel, strides, dilations, explicit pads and the ONNX output size of a pooling window."""
    kernel, strides, dilations = spatial_attrs(node, [])
    rank = len(kernel)
    pads = spatial_pads(node, x, kernel, strides, dilations)
    sizes = [_output_size(x.shape[2 + a], kernel[a], strides[a], dilations[a], pads[a], pads[rank + a], ceil_mode)
             for a in range(rank)]
    return kernel, strides, dilations, pads, sizes


@converter("MaxPool")
def max_pool(node):
    ceil_mode = bool(node.attr("ceil_mode", 0))

    def run(x):
        kernel, strides, dilations, pads, sizes = _window(node, x, ceil_mode)
        rank = len(kernel)
        padding = _native_padding(pads, kernel, dilations)
        if padding is None:  # asymmetric or oversized pads: pad with -inf ourselves
            x, padding = pad_spatial(x, pads, value=-math.inf), [0] * rank
        y = _MAX_POOL[rank](x, kernel, strides, padding, dilations, ceil_mode=ceil_mode)
        return _crop(y, sizes)

    if len([name for name in node.outputs if name]) > 1:
        raise UnsupportedOpError(f"{node.describe()}: the Indices output of MaxPool is not supported")
    return run


@converter("AveragePool")
def average_pool(node):
    """torch's avg_pool has no dilation and pads symmetrically; other cases use a summing conv."""
    ceil_mode = bool(node.attr("ceil_mode", 0))
    count_include_pad = bool(node.attr("count_include_pad", 0))

    def run(x):
        kernel, strides, dilations, pads, sizes = _window(node, x, ceil_mode)
        rank = len(kernel)
        padding = _native_padding(pads, kernel, dilations)
        if padding is not None and all(d == 1 for d in dilations):
            y = _AVG_POOL[rank](x, kernel, strides, padding, ceil_mode, count_include_pad)
            return _crop(y, sizes)
        return _average_by_conv(x, kernel, strides, dilations, pads, sizes, count_include_pad)

    return run


def _average_by_conv(x, kernel, strides, dilations, pads, sizes, count_include_pad):
    """Window sums / window counts with a ones kernel; windows past the padded input count nothing."""
    rank = len(kernel)
    channels = x.shape[1]
    extra = [max((sizes[a] - 1) * strides[a] + (kernel[a] - 1) * dilations[a] + 1
                 - (x.shape[2 + a] + pads[a] + pads[rank + a]), 0) for a in range(rank)]
    ones = torch.ones([channels, 1] + list(kernel), dtype=x.dtype, device=x.device)
    mask = torch.ones([1, 1] + list(x.shape[2:]), dtype=x.dtype, device=x.device)
    if count_include_pad:
        mask = pad_spatial(mask, pads, value=1.0)
        mask = pad_spatial(mask, [0] * rank + extra)
    else:
        mask = pad_spatial(mask, list(pads[:rank]) + [e + p for e, p in zip(extra, pads[rank:])])
    total = pad_spatial(x, list(pads[:rank]) + [e + p for e, p in zip(extra, pads[rank:])])
    sums = _CONV[rank](total, ones, None, strides, 0, dilations, channels)
    counts = _CONV[rank](mask, ones[:1], None, strides, 0, dilations)
    return _crop(sums / counts, sizes)


@converter("GlobalAveragePool")
def global_average_pool(node):
    return lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@converter("GlobalMaxPool")
def global_max_pool(node):
    return lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)
