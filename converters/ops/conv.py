"""Conv and ConvTranspose (1-D, 2-D, 3-D), including auto_pad and asymmetric pads."""
from __future__ import annotations

import torch.nn.functional as F

from fp_onnx.converters.ops.common import pad_spatial, spatial_attrs, spatial_pads, symmetric
from fp_onnx.converters.registry import converter

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@converter("Conv", params=(1, 2))
def conv(node):
    groups = node.attr("group", 1)

    def run(x, weight, bias=None):
        kernel, strides, dilations = spatial_attrs(node, weight.shape[2:])
        pads = spatial_pads(node, x, kernel, strides, dilations)
        padding = symmetric(pads)
        if padding is None:  # torch pads symmetrically only: pad explicitly with zeros
            x, padding = pad_spatial(x, pads), [0] * len(kernel)
        return _CONV[len(kernel)](x, weight, bias, strides, padding, dilations, groups)

    return run


@converter("ConvTranspose", params=(1, 2))
def conv_transpose(node):
    """Computed unpadded, then cropped by the ONNX pads; bias added last so output_padding cells get it too."""
    groups = node.attr("group", 1)

    def run(x, weight, bias=None):
        kernel, strides, dilations = spatial_attrs(node, weight.shape[2:])
        rank = len(kernel)
        y = _CONV_TRANSPOSE[rank](x, weight, None, strides, 0, 0, groups, dilations)
        output_padding = list(node.attr("output_padding", [0] * rank))
        full = [size + extra for size, extra in zip(y.shape[2:], output_padding)]
        begins, ends = _transpose_pads(node, x, full, kernel, strides, dilations, output_padding)
        y = pad_spatial(y, [0] * rank + output_padding)
        for axis in range(rank):
            y = y.narrow(2 + axis, begins[axis], full[axis] - begins[axis] - ends[axis])
        if bias is not None:
            y = y + bias.reshape([1, -1] + [1] * rank)
        return y

    return run


def _transpose_pads(node, x, full, kernel, strides, dilations, output_padding):
    """Begin/end crops of the unpadded ConvTranspose output (ONNX ConvTranspose spec, output_shape rules)."""
    rank = len(kernel)
    output_shape = node.attr("output_shape")
    auto_pad = node.attr("auto_pad", "NOTSET")
    if output_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = [x.shape[2 + axis] * strides[axis] for axis in range(rank)]
    if output_shape is None:
        pads = [0] * (2 * rank) if auto_pad == "VALID" else list(node.attr("pads", [0] * (2 * rank)))
        return pads[:rank], pads[rank:]
    output_shape = list(output_shape)[-rank:]
    begins, ends = [], []
    for axis in range(rank):
        total = full[axis] - output_shape[axis]
        small, large = total // 2, total - total // 2
        if auto_pad == "SAME_UPPER":
            begins.append(small), ends.append(large)
        else:
            begins.append(large), ends.append(small)
    return begins, ends


