"""Helpers shared by op converters: integer lists from tensors, axes, spatial padding."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from onnx import TensorProto

from fp_onnx.errors import UnsupportedOpError


def ints(value: torch.Tensor | Sequence[int] | int | None) -> list[int] | None:
    """A shape-like input as Python ints; None stays None.

    The value is a tensor, or already a Python list/scalar when the graph
    module resolved a constant input statically (see `static_inputs` in the registry).
    """
    values = _python_values(value)
    return None if values is None else [int(v) for v in values]


def floats(value: torch.Tensor | Sequence[float] | float | None) -> list[float] | None:
    """Like `ints`, for float inputs (Resize scales/roi, Pad value); an empty input is None."""
    values = _python_values(value)
    return [float(v) for v in values] if values else None


def _python_values(value):
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.reshape(-1).tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def normalize_axes(axes: Sequence[int], rank: int) -> list[int]:
    """ONNX axes may be negative (counted from the end)."""
    return [axis + rank if axis < 0 else axis for axis in axes]


def spatial_pads(node, x: torch.Tensor, kernel: Sequence[int], strides: Sequence[int],
                 dilations: Sequence[int]) -> list[int]:
    """Begin and end pads per spatial axis, [b1, b2, ..., e1, e2, ...], resolving auto_pad.

    SAME_UPPER/SAME_LOWER: output = ceil(input / stride) and the odd pad goes to
    the end (UPPER) or the beginning (LOWER); VALID: no padding (ONNX Conv spec).
    """
    rank = len(kernel)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        return list(node.attr("pads", [0] * (2 * rank)))
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise UnsupportedOpError(f"{node.describe()} has unknown auto_pad '{auto_pad}'")
    begins, ends = [], []
    for axis in range(rank):
        size = x.shape[2 + axis]
        out = math.ceil(size / strides[axis])
        total = max((out - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def symmetric(pads: Sequence[int]) -> list[int] | None:
    """The per-axis padding if begin == end on every axis, else None."""
    rank = len(pads) // 2
    begins, ends = list(pads[:rank]), list(pads[rank:])
    return begins if begins == ends else None


def pad_spatial(x: torch.Tensor, pads: Sequence[int], value: float = 0.0) -> torch.Tensor:
    """Pad the spatial axes of an N,C,... tensor with ONNX-ordered pads (torch orders last axis first)."""
    rank = len(pads) // 2
    torch_pads: list[int] = []
    for axis in reversed(range(rank)):
        torch_pads += [pads[axis], pads[rank + axis]]
    if not any(torch_pads):
        return x
    return F.pad(x, torch_pads, value=value)


def spatial_attrs(node, weight_or_kernel: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """kernel_shape, strides, dilations with ONNX defaults (kernel from the weight if absent)."""
    kernel = list(node.attr("kernel_shape", weight_or_kernel))
    rank = len(kernel)
    strides = list(node.attr("strides", [1] * rank))
    dilations = list(node.attr("dilations", [1] * rank))
    return kernel, strides, dilations


_TORCH_DTYPES = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT8: torch.int8,
    TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64,
    TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}


def onnx_to_torch_dtype(node, onnx_type: int) -> torch.dtype:
    """torch dtype of an ONNX TensorProto element type; refuse types torch cannot hold."""
    if onnx_type not in _TORCH_DTYPES:
        name = TensorProto.DataType.Name(onnx_type)
        raise UnsupportedOpError(f"{node.describe()} uses element type {name}, which has no torch dtype")
    return _TORCH_DTYPES[onnx_type]
