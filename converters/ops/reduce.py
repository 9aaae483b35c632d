"""Reduce* ops: axes are an attribute before the opset where they became an input.

ReduceSum took axes as an input from opset 13, the others from opset 18. Empty
axes reduce over everything unless noop_with_empty_axes=1 (then identity).
"""
from __future__ import annotations

from fp_onnx.converters.ops.common import ints, normalize_axes
from fp_onnx.converters.registry import converter


def _reduce_all_or(fn, x, axes, keepdims, noop_with_empty_axes):
    if not axes:
        if noop_with_empty_axes:
            return x
        axes = list(range(x.dim()))
    return fn(x, normalize_axes(axes, x.dim()), keepdims)


_REDUCERS = {
    "ReduceMean": (lambda x, axes, keep: x.mean(dim=axes, keepdim=keep), 18),
    "ReduceSum": (lambda x, axes, keep: x.sum(dim=axes, keepdim=keep), 13),
    "ReduceMax": (lambda x, axes, keep: x.amax(dim=axes, keepdim=keep), 18),
    "ReduceMin": (lambda x, axes, keep: x.amin(dim=axes, keepdim=keep), 18),
    "ReduceProd": (lambda x, axes, keep: _prod(x, axes, keep), 18),
    "ReduceL2": (lambda x, axes, keep: x.square().sum(dim=axes, keepdim=keep).sqrt(), 18),
    "ReduceSumSquare": (lambda x, axes, keep: x.square().sum(dim=axes, keepdim=keep), 18),
    "ReduceL1": (lambda x, axes, keep: x.abs().sum(dim=axes, keepdim=keep), 18),
    "ReduceLogSum": (lambda x, axes, keep: x.sum(dim=axes, keepdim=keep).log(), 18),
    "ReduceLogSumExp": (lambda x, axes, keep: x.logsumexp(dim=axes, keepdim=keep), 18),
}


def _prod(x, axes, keep):
    for axis in sorted(axes, reverse=True):
        x = x.prod(dim=axis, keepdim=keep)
    return x


def _register(op_type: str, fn, axes_input_since: int) -> None:
    @converter(op_type, until=axes_input_since - 1)
    def axes_attribute(node):
        axes, keepdims = node.attr("axes", []), bool(node.attr("keepdims", 1))
        return lambda x: _reduce_all_or(fn, x, list(axes), keepdims, False)

    @converter(op_type, since=axes_input_since, static_inputs=(1,))
    def axes_input(node):
        keepdims = bool(node.attr("keepdims", 1))
        noop = bool(node.attr("noop_with_empty_axes", 0))
        return lambda x, axes=None: _reduce_all_or(fn, x, ints(axes) or [], keepdims, noop)


for _op_type, (_fn, _since) in _REDUCERS.items():
    _register(_op_type, _fn, _since)


@converter("ArgMax")
def arg_max(node):
    axis, keepdims = node.attr("axis", 0), bool(node.attr("keepdims", 1))
    if node.attr("select_last_index", 0):
        return lambda x: (x.shape[axis] - 1 - x.flip(axis).argmax(dim=axis, keepdim=keepdims))
    return lambda x: x.argmax(dim=axis, keepdim=keepdims)


