"""Model size and compute: parameters and FLOPs, one FLOP function per op type.

Reported before and after pruning so the user sees what fine-pruning saved.
FLOPs are floating-point operations for ONE input sample (symbolic dims such as
the batch count as 1), with one multiply-accumulate = 2 FLOPs (a Conv's or
Gemm's bias add is 1 FLOP per output). Element-wise ops count 1 per output
element, pooling 1 per window element; data-movement ops (Reshape, Concat,
Transpose, ...) count 0. Ops without a FLOP function count 0 and are listed in
`FlopCount.uncounted`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx

Shapes = dict[str, tuple[int, ...]]
FlopFunction = Callable[[onnx.NodeProto, Shapes], int]
_FLOPS: dict[str, FlopFunction] = {}

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@dataclass
class FlopCount:
    total: int
    by_op_type: dict[str, int] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)  # op types without a FLOP function


def count_parameters(model: onnx.ModelProto) -> int:
    """Elements of the floating-point initializers that some node reads (shape constants and
    unused initializers do not count)."""
    used = {name for node in model.graph.node for name in node.input}
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if t.name in used and t.data_type in _FLOAT_TYPES)


def count_flops(model: onnx.ModelProto) -> int:
    """FLOPs for one sample (1 multiply-accumulate = 2 FLOPs); see `flop_breakdown`."""
    return flop_breakdown(model).total


def flop_breakdown(model: onnx.ModelProto) -> FlopCount:
    """FLOPs per op type and the op types that were not counted. Shapes are re-inferred."""
    shapes = _static_shapes(onnx.shape_inference.infer_shapes(model))
    by_op: Counter[str] = Counter()
    uncounted: set[str] = set()
    for node in model.graph.node:
        function = _FLOPS.get(node.op_type)
        if function is None:
            uncounted.add(node.op_type)
            continue
        by_op[node.op_type] += function(node, shapes)
    return FlopCount(sum(by_op.values()), dict(by_op), sorted(uncounted))


def flop_function(*op_types: str) -> Callable[[FlopFunction], FlopFunction]:
    def register(function: FlopFunction) -> FlopFunction:
        for op_type in op_types:
            _FLOPS[op_type] = function
        return function

    return register


def _static_shapes(model: onnx.ModelProto) -> Shapes:
    """Every known tensor shape, with symbolic or unknown dims counted as 1."""
    shapes: Shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else 1
                                       for d in value.type.tensor_type.shape.dim)
    return shapes


def _size(shapes: Shapes, name: str) -> int:
    return int(np.prod(shapes.get(name, (0,))))


def _attr(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _has_input(node: onnx.NodeProto, index: int) -> bool:
    return len(node.input) > index and bool(node.input[index])


# --------------------------------------------------------------------------- FLOP functions
@flop_function("Conv")
def _conv(node: onnx.NodeProto, shapes: Shapes) -> int:
    weight = shapes.get(node.input[1], ())
    outputs = _size(shapes, node.output[0])
    macs_per_output = int(np.prod(weight[1:])) if weight else 0  # (C/group) * kernel
    return 2 * outputs * macs_per_output + (outputs if _has_input(node, 2) else 0)


@flop_function("Gemm")
def _gemm(node: onnx.NodeProto, shapes: Shapes) -> int:
    a = shapes.get(node.input[0], ())
    k = (a[0] if _attr(node, "transA", 0) else a[-1]) if a else 0
    outputs = _size(shapes, node.output[0])
    return 2 * outputs * k + (outputs if _has_input(node, 2) else 0)


@flop_function("MatMul")
def _matmul(node: onnx.NodeProto, shapes: Shapes) -> int:
    a = shapes.get(node.input[0], ())
    return 2 * _size(shapes, node.output[0]) * (a[-1] if a else 0)


@flop_function("BatchNormalization", "InstanceNormalization", "LayerNormalization")
def _normalization(node: onnx.NodeProto, shapes: Shapes) -> int:
    return 2 * _size(shapes, node.output[0])  # a scale and a shift once the statistics are folded


@flop_function("MaxPool", "AveragePool", "LpPool")
def _pool(node: onnx.NodeProto, shapes: Shapes) -> int:
    return _size(shapes, node.output[0]) * int(np.prod(_attr(node, "kernel_shape", [1])))


@flop_function("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "ReduceMean", "ReduceMax", "ReduceMin",
               "ReduceSum", "ReduceL2")
def _reduction(node: onnx.NodeProto, shapes: Shapes) -> int:
    return _size(shapes, node.input[0])


@flop_function("Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu",
               "Selu", "Softplus", "Softsign", "Exp", "Add", "Sub", "Mul", "Div", "Sqrt", "Pow", "Max", "Min",
               "Erf", "Neg", "Abs", "Gelu")
def _elementwise(node: onnx.NodeProto, shapes: Shapes) -> int:
    return _size(shapes, node.output[0])


@flop_function("Softmax", "LogSoftmax")
def _softmax(node: onnx.NodeProto, shapes: Shapes) -> int:
    return 3 * _size(shapes, node.output[0])  # exp, sum, divide


@flop_function("Reshape", "Flatten", "Transpose", "Identity", "Dropout", "Concat", "Pad", "Squeeze", "Unsqueeze",
               "Constant", "Shape", "Gather", "Cast", "Slice", "Split", "Expand", "Tile")
def _data_movement(node: onnx.NodeProto, shapes: Shapes) -> int:
    return 0
