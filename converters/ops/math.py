"""Arithmetic, comparison and matrix ops (numpy-style broadcasting, as ONNX)."""
from __future__ import annotations

import torch

from fp_onnx.converters.registry import converter


def _binary(op_type: str, fn, trainable: bool = False) -> None:
    # Per-channel scales/biases in Add/Mul/Sub/Div (unfused BN, Keras bias adds)
    # are trained; scalar constants (x / 255, eps) stay fixed.
    params = (0, 1) if trainable else ()
    converter(op_type, params=params, min_param_numel=2)(lambda node: fn)


def _div(a, b):
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer Div truncates like C


def _pow(base, exponent):
    return torch.pow(base, exponent).to(base.dtype)  # ONNX Pow keeps the base's type


_binary("Add", torch.add, trainable=True)
_binary("Sub", torch.sub, trainable=True)
_binary("Mul", torch.mul, trainable=True)
_binary("Div", _div, trainable=True)
_binary("Pow", _pow)
_binary("Equal", torch.eq)
_binary("Greater", torch.gt)
_binary("Less", torch.lt)
_binary("GreaterOrEqual", torch.ge)
_binary("LessOrEqual", torch.le)
_binary("And", torch.logical_and)
_binary("Or", torch.logical_or)
_binary("Xor", torch.logical_xor)

for _op_type, _fn in {
    "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg, "Abs": torch.abs,
    "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round,
    "Sign": torch.sign, "Not": torch.logical_not, "Sin": torch.sin, "Cos": torch.cos,
}.items():
    converter(_op_type)(lambda node, fn=_fn: fn)


def _variadic(op_type: str, fold) -> None:
    @converter(op_type)
    def build(node):
        def run(*tensors):
            result = tensors[0]
            for tensor in tensors[1:]:
                result = fold(result, tensor)
            return result

        return run


_variadic("Max", torch.maximum)
_variadic("Min", torch.minimum)
_variadic("Sum", torch.add)


@converter("Mean")
def mean(node):
    return lambda *tensors: sum(tensors[1:], tensors[0]) / len(tensors)


@converter("Where")
def where(node):
    return lambda condition, x, y: torch.where(condition, x, y)


@converter("MatMul", params=(0, 1))
def matmul(node):
    return torch.matmul


@converter("Gemm", params=(1, 2))
def gemm(node):
    """Y = alpha * A' B' + beta * C, A' = A^T if transA, B' = B^T if transB (C broadcasts)."""
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    trans_a, trans_b = bool(node.attr("transA", 0)), bool(node.attr("transB", 0))

    def run(a, b, c=None):
        a = a.t() if trans_a else a
        if trans_b and alpha == 1.0 and (c is None or (beta == 1.0 and tuple(c.shape) == (b.shape[0],))):
            return torch.nn.functional.linear(a, b, c)  # the common torch.nn.Linear export
        y = a @ (b.t() if trans_b else b)
        y = y if alpha == 1.0 else alpha * y
        if c is not None:
            y = y + (c if beta == 1.0 else beta * c)
        return y

    return run
