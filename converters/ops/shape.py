"""Layout ops: Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Shape, Size, Expand, Tile."""
from __future__ import annotations

import torch

from fp_onnx.converters.ops.common import ints, normalize_axes
from fp_onnx.converters.registry import converter


@converter("Flatten")
def flatten(node):
    """2-D output (prod(shape[:axis]), prod(shape[axis:])); written with flatten() so re-tracing keeps the batch dynamic."""
    axis = node.attr("axis", 1)

    def run(x):
        start = axis + x.dim() if axis < 0 else axis
        if start == 0:
            return x.reshape(1, -1)
        y = x.flatten(start) if start < x.dim() else x.unsqueeze(-1)
        return y.flatten(0, start - 1)

    return run


def _reshape(x, shape, allowzero):
    # 0 copies the input's dimension (unless allowzero); -1 is inferred (ONNX Reshape spec).
    target = [x.shape[i] if (size == 0 and not allowzero) else size for i, size in enumerate(shape)]
    return x.reshape(target)


@converter("Reshape", until=4)
def reshape_attribute(node):
    shape = list(node.attr("shape"))
    return lambda x: _reshape(x, shape, False)


@converter("Reshape", since=5, static_inputs=(1,))
def reshape_input(node):
    allowzero = bool(node.attr("allowzero", 0))
    return lambda x, shape: _reshape(x, ints(shape), allowzero)


@converter("Transpose")
def transpose(node):
    perm = node.attr("perm")
    return lambda x: x.permute(perm if perm is not None else list(reversed(range(x.dim()))))


def _squeeze(x, axes):
    if not axes:
        return x.squeeze() if x.dim() else x
    return x.squeeze(tuple(normalize_axes(axes, x.dim())))


def _unsqueeze(x, axes):
    for axis in sorted(normalize_axes(axes, x.dim() + len(axes))):
        x = x.unsqueeze(axis)
    return x


@converter("Squeeze", until=12)
def squeeze_attribute(node):
    axes = list(node.attr("axes", []))
    return lambda x: _squeeze(x, axes)


@converter("Squeeze", since=13, static_inputs=(1,))
def squeeze_input(node):
    return lambda x, axes=None: _squeeze(x, ints(axes) or [])


@converter("Unsqueeze", until=12)
def unsqueeze_attribute(node):
    axes = list(node.attr("axes"))
    return lambda x: _unsqueeze(x, axes)


@converter("Unsqueeze", since=13, static_inputs=(1,))
def unsqueeze_input(node):
    return lambda x, axes: _unsqueeze(x, ints(axes))


@converter("Shape")
def shape(node):
    start, end = node.attr("start", 0), node.attr("end")

    def run(x):
        return torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device)

    return run


@converter("Size")
def size(node):
    return lambda x: torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@converter("Expand", static_inputs=(1,))
def expand(node):
    """Bidirectional broadcast: dims of 1 in `shape` keep the input's size (unlike torch.expand)."""

    def run(x, shape):
        return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(ints(shape))))

    return run


@converter("Tile", static_inputs=(1,))
def tile(node):
    return lambda x, repeats: x.repeat(ints(repeats))
