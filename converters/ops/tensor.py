"""Constant, ConstantOfShape, Cast, Identity, Dropout, Range and Pad."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from fp_onnx.converters.ops.common import floats, ints, onnx_to_torch_dtype
from fp_onnx.converters.registry import converter
from fp_onnx.errors import UnsupportedOpError


class ConstantValue(torch.nn.Module):
    """A Constant node's value, held as a non-persistent buffer so it moves with .to(device)."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.register_buffer("value", value, persistent=False)

    def forward(self):
        return self.value


def constant_array(node) -> np.ndarray:
    """The value of a Constant node (tensor, float(s) or int(s) attribute); string and sparse values are refused."""
    attrs = node.attrs
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    raise UnsupportedOpError(f"{node.describe()} holds a {sorted(attrs)} value; only numeric tensors are supported")


@converter("Constant")
def constant(node):
    return ConstantValue(torch.from_numpy(np.array(constant_array(node), copy=True)))


@converter("ConstantOfShape")
def constant_of_shape(node):
    value = node.attr("value")
    fill = torch.from_numpy(np.array(numpy_helper.to_array(value), copy=True)) if value is not None else torch.zeros(1)

    def run(shape):
        return torch.full(ints(shape), fill.reshape(-1)[0].item(), dtype=fill.dtype, device=shape.device)

    return run


@converter("Cast")
def cast(node):
    dtype = onnx_to_torch_dtype(node, node.attr("to"))
    return lambda x: x.to(dtype)


@converter("CastLike", since=15)
def cast_like(node):
    return lambda x, like: x.to(like.dtype)


@converter("Identity")
def identity(node):
    return lambda x: x


class Dropout(torch.nn.Module):
    """Identity in eval(); in train() zeroes elements with probability `ratio` and scales by 1/(1-ratio).

    ONNX graphs are exported for inference (training_mode absent or false), but
    fine-tuning wants the regularisation back, so the module's mode decides.
    The optional mask output is the keep mask (True where kept).
    """

    def __init__(self, ratio: float | None, outputs: int):
        super().__init__()
        self.ratio, self.outputs = ratio, outputs

    def forward(self, x, ratio=None, training_mode=None):
        p = floats(ratio)[0] if ratio is not None else (self.ratio if self.ratio is not None else 0.5)
        if self.training and p > 0:
            mask = torch.rand_like(x) >= p
            y = x * mask / (1.0 - p)
        else:
            y, mask = x, torch.ones_like(x, dtype=torch.bool)
        return (y, mask) if self.outputs > 1 else y


@converter("Dropout", until=11)
def dropout_attribute(node):
    return Dropout(node.attr("ratio", 0.5), len(node.outputs))


@converter("Dropout", since=12, static_inputs=(1,))
def dropout_input(node):
    return Dropout(None, len(node.outputs))


@converter("Range")
def range_(node):
    def run(start, limit, delta):
        return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)

    return run


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _pad(node, x, pads, value, mode, axes=None):
    """ONNX pads [b_1..b_n, e_1..e_n] (negative pads crop) -> F.pad's last-axis-first pairs."""
    rank = x.dim()
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    count = len(axes)
    begin, end = [0] * rank, [0] * rank
    for i, axis in enumerate(axes):
        begin[axis], end[axis] = pads[i], pads[count + i]
    used = [axis for axis in range(rank) if begin[axis] or end[axis]]
    if not used:
        return x
    torch_pads: list[int] = []
    for axis in reversed(range(min(used), rank)):
        torch_pads += [begin[axis], end[axis]]
    if mode not in _PAD_MODES:
        raise UnsupportedOpError(f"{node.describe()} has unknown pad mode '{mode}'")
    if mode == "constant":
        return F.pad(x, torch_pads, value=float(value))
    if min(used) < 2:
        raise UnsupportedOpError(f"{node.describe()}: {mode} padding of the batch or channel axis is not supported")
    return F.pad(x, torch_pads, mode=_PAD_MODES[mode])


@converter("Pad", until=10)
def pad_attribute(node):
    pads = list(node.attr("pads", node.attr("paddings", [])))
    value, mode = node.attr("value", 0.0), node.attr("mode", "constant")
    return lambda x: _pad(node, x, pads, value, mode)


@converter("Pad", since=11, static_inputs=(1, 2, 3))
def pad_input(node):
    mode = node.attr("mode", "constant")

    def run(x, pads, constant_value=None, axes=None):
        value = (floats(constant_value) or [0.0])[0]
        return _pad(node, x, ints(pads), value, mode, ints(axes))

    return run
