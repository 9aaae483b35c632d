"""Which ONNX ops are channel-wise, and how they carry the channel axis.

An op is *channel-wise* for a tensor when output channel c depends only on input
channel c (activations, BatchNormalization, per-channel affine constants,
pooling, zero padding of the spatial axes, layout Transposes). Such ops sit
between a Conv and the activation tensor a prune point is measured at, and
surgery must slice their per-channel parameters when it removes channels.

The registry maps an op type to one small function that, for a given node, the
input index the traced tensor enters at, the channel axis and the tensor rank,
returns a `ChannelRule` (or None when this node is not channel-wise for that
axis, e.g. a Mul by a computed tensor). Prune-point discovery and surgery both
use this one table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from fp_onnx.graph import input_constant
from fp_onnx.registry import register


# Maps the per-channel constant values of some input channels (a channel that is the same number
# everywhere, e.g. 0 for a pruned channel) to the op's output values for those channels, or None
# when the output channel would no longer be constant (zero padding around a non-zero constant).
ConstantMap = Callable[[np.ndarray, list[int]], "np.ndarray | None"]


def _same(values: np.ndarray, channels: list[int]) -> np.ndarray:
    return values


@dataclass(frozen=True)
class ChannelRule:
    """How one channel-wise node treats the channel axis.

    output_axis: the axis of output 0 that holds the channels.
    params: per-channel constant inputs as (input index, axis of that constant that holds the
        channels); surgery slices them. A constant whose channel axis has size 1 is not listed.
    zero_params: inputs whose channel entries surgery sets to 0 so that an all-zero input channel
        gives an all-zero output channel; None when no parameter choice makes that true (Sigmoid).
    constant: what the node does to channels that are constant (see ConstantMap); surgery uses it
        to fold what a removed channel would have contributed (BN of 0 is not 0) into the biases
        of the layer that reads it.
    """

    output_axis: int
    params: tuple[tuple[int, int], ...] = ()
    zero_params: tuple[int, ...] | None = ()
    constant: ConstantMap = _same


ChannelHandler = Callable[[gs.Node, int, int, int], "ChannelRule | None"]
_HANDLERS: dict[str, ChannelHandler] = {}


def channel_op(*op_types: str, replace: bool = False) -> Callable[[ChannelHandler], ChannelHandler]:
    """Register `handler(node, input_index, axis, rank) -> ChannelRule | None` for `op_types`.

    This is the public way to teach prune-point discovery and surgery a vendor op that works
    per channel (a contrib activation, say). Registering an op type twice raises ValueError
    unless `replace=True`, so a typo never silently overrides a built-in rule.

    Example::

        @channel_op("Mish")
        def mish(node, index, axis, rank):
            return ChannelRule(axis) if index == 0 else None
    """

    def add(handler: ChannelHandler) -> ChannelHandler:
        return register(_HANDLERS, op_types, handler, replace=replace, what="a channel rule")

    return add


def channel_rule(node: gs.Node, input_index: int, axis: int, rank: int) -> ChannelRule | None:
    """The rule for `node` reading the traced tensor at `input_index` with channels on `axis`,
    or None when the node is not channel-wise there (unknown op, mixing op, extra used outputs)."""
    handler = _HANDLERS.get(node.op)
    if handler is None or any(out.outputs for out in node.outputs[1:]):
        return None
    return handler(node, input_index, axis, rank)


def is_channel_op(op_type: str) -> bool:
    return op_type in _HANDLERS


# --------------------------------------------------------------------------- handlers
def _selu(v: np.ndarray, a: dict) -> np.ndarray:
    alpha, gamma = a.get("alpha", 1.67326319217681884765625), a.get("gamma", 1.05070102214813232421875)
    return gamma * np.where(v > 0, v, alpha * (np.exp(v) - 1))


# Element-wise activations: f(v, attributes), evaluated on constant channels in float64.
_UNARY: dict[str, Callable[[np.ndarray, dict], np.ndarray]] = {
    "Relu": lambda v, a: np.maximum(v, 0.0),
    "LeakyRelu": lambda v, a: np.where(v >= 0, v, a.get("alpha", 0.01) * v),
    "Elu": lambda v, a: np.where(v >= 0, v, a.get("alpha", 1.0) * (np.exp(v) - 1)),
    "Selu": _selu,
    "Tanh": lambda v, a: np.tanh(v),
    "HardSwish": lambda v, a: v * np.clip(v / 6 + 0.5, 0, 1),
    "Softsign": lambda v, a: v / (1 + np.abs(v)),
    "Identity": lambda v, a: v,
    "Dropout": lambda v, a: v,  # inference: the identity
    "Sigmoid": lambda v, a: 1 / (1 + np.exp(-v)),
    "HardSigmoid": lambda v, a: np.clip(a.get("alpha", 0.2) * v + a.get("beta", 0.5), 0, 1),
    "Softplus": lambda v, a: np.log1p(np.exp(v)),
    "Exp": lambda v, a: np.exp(v),
    "Gelu": lambda v, a: _gelu(v, a.get("approximate", "none")),
}


def _gelu(v: np.ndarray, approximate: str) -> np.ndarray:
    """GELU (opset 20): x * Phi(x), or its tanh approximation."""
    v = np.asarray(v, dtype=np.float64)
    if approximate == "tanh":
        return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))
    return 0.5 * v * (1 + np.vectorize(math.erf)(v / math.sqrt(2)))


@channel_op(*_UNARY)
def _unary(node: gs.Node, index: int, axis: int, rank: int) -> ChannelRule | None:
    if index != 0:
        return None
    fn, attrs = _UNARY[node.op], dict(node.attrs)
    keeps_zero = float(fn(np.zeros(1), attrs)[0]) == 0.0
    return ChannelRule(axis, zero_params=() if keeps_zero else None, constant=lambda v, c: fn(v, attrs))


@channel_op("Clip")
def _clip(node: gs.Node, index: int, axis: int, rank: int) -> ChannelRule | None:
    if index != 0:
        return None
    lo, hi = node.attrs.get("min"), node.attrs.get("max")  # opset < 11 attributes
    lo_in, hi_in = input_constant(node, 1), input_constant(node, 2)
    lo = float(lo_in) if lo_in is not None else lo
    hi = float(hi_in) if hi_in is not None else hi
    if any(len(node.inputs) > i and node.inputs[i].name and input_constant(node, i) is None for i in (1, 2)):
        return None  # computed bounds
    keeps_zero = (lo is None or lo <= 0.0) and (hi is None or hi >= 0.0)
    return ChannelRule(axis, zero_params=() if keeps_zero else None, constant=lambda v, c: np.clip(v, lo, hi))


@channel_op("BatchNormalization")
def _batch_norm(node: gs.Node, index: int, axis: int, rank: int) -> ChannelRule | None:
    """Inference BN on axis 1: scale, B, mean, var are (C,). Scale = B = 0 gives an exact 0."""
    if index != 0 or axis != 1:
        return None
    def constant(values: np.ndarray, channels: list[int]) -> np.ndarray:
        scale, bias, mean, var = (input_constant(node, i).astype(np.float64)[channels] for i in range(1, 5))
        return (values - mean) / np.sqrt(var + node.attrs.get("epsilon", 1e-5)) * scale + bias

    return ChannelRule(axis, params=tuple((i, 0) for i in range(1, 5)), zero_params=(1, 2), constant=constant)


@channel_op("PRelu")
def _prelu(node: gs.Node, index: int, axis: int, rank: int) -> ChannelRule | None:
    slope = input_constant(node, 1)
    if index != 0 or slope is None:
        return None
    const_axis = _broadcast_axis(slope.shape, axis, rank)
    if const_axis is False:
        return None

    def constant(values: np.ndarray, channels: list[int]) -> np.ndarray | None:
        a = _per_channel(slope, const_axis, channels)
        return None if a is None else np.where(values >= 0, values, a * values)

    return ChannelRule(axis, params=() if const_axis is None else ((1, const_axis),), constant=constant)


@channel_op("Mul", "Add", "Sub", "Div")
def _affine_constant(node: gs.Node, index: int, axis: int, rank: int) -> ChannelRule | None:
    """x (op) c with a constant c that broadcasts per channel (or is a scalar) and never widens x."""
    other = 1 - index
    const = input_constant(node, other)
    if const is None or (node.op in ("Div", "Sub") and index != 0):
        return None  # c / x and c - x: element-wise too, but not needed; keep the table obvious
    const_axis = _broadcast_axis(const.shape, axis, rank)
    if const_axis is False:
        return None
    params = () if const_axis is None else ((other, const_axis),)
    apply = _ARITHMETIC[node.op]

    def constant(values: np.ndarray, channels: list[int]) -> np.ndarray | None:
        c = _per_channel(const, const_axis, channels)
        return None if c is None else apply(values, c)

    if node.op in ("Mul", "Div"):
        return ChannelRule(axis, params=params, constant=constant)
    # x + c keeps a zero channel at zero only when that channel's c is zeroed, which needs c per channel.
    zeroable = (other,) if params else (() if not np.any(const) else None)
    return ChannelRule(axis, params=params, zero_params=zeroable, constant=constant)


_ARITHMETIC = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}


@channel_op("MaxPool", "AveragePool", "LpPool")
def _pool(node: gs.Node, index: int, axis: int, rank: int) -> ChannelRule | None:
    """Windowed pooling works per channel on the spatial axes (NCHW only: channels on axis 1)."""
    if index != 0 or axis != 1:
        return None
    padded = any(node.attrs.get("pads", ())) or node.attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER")
    # A max over a constant window is that constant (MaxPool ignores padding); an average that counts
    # zero padding, or an Lp norm over border windows, is not constant near the border.
    exact = node.op == "MaxPool" or (node.op == "AveragePool" and not (padded and node.attrs.get("count_include_pad")))
    return ChannelRule(axis, constant=_same if exact else _zero_only)


@channel_op("Pad")
def _pad(node: gs.Node, index: int, axis: int, rank: int) -> ChannelRule | None:
    """Padding that adds nothing on the batch and channel axes (opset < 11 attr, >= 11 input)."""
    if index != 0 or (len(node.inputs) > 3 and node.inputs[3].name):
        return None  # explicit `axes` input (opset 18): not needed by any exporter we know
    pads = node.attrs.get("pads") if "pads" in node.attrs else input_constant(node, 1)
    if pads is None:
        return None
    pads = np.asarray(pads).reshape(-1)
    if len(pads) != 2 * rank or any(pads[a] or pads[a + rank] for a in {0, axis}):
        return None
    value = node.attrs.get("value", 0.0)
    value_in = input_constant(node, 2)
    if value_in is not None:
        value = float(np.asarray(value_in).reshape(-1)[0]) if value_in.size else 0.0
    keeps_zero = node.attrs.get("mode", "constant") != "constant" or value == 0.0
    if node.attrs.get("mode", "constant") != "constant" or not pads.any():
        return ChannelRule(axis, constant=_same)
    return ChannelRule(axis, zero_params=() if keeps_zero else None,
                       constant=lambda v, c: v if np.all(v == value) else None)


@channel_op("Transpose")
def _transpose(node: gs.Node, index: int, axis: int, rank: int) -> ChannelRule | None:
    """A layout Transpose moves the channel axis to position perm.index(axis) (default perm reverses)."""
    perm = list(node.attrs.get("perm", range(rank - 1, -1, -1)))
    if index != 0 or perm[0] != 0 or len(perm) != rank:
        return None  # a Transpose that moves the batch axis is not a layout change
    return ChannelRule(perm.index(axis))


def _zero_only(values: np.ndarray, channels: list[int]) -> np.ndarray | None:
    return values if not np.any(values) else None


def _per_channel(const: np.ndarray, const_axis: int | None, channels: list[int]) -> np.ndarray | None:
    """The constant's value for each of `channels`, None when it also varies along other axes."""
    if const.size == 1:
        return np.full(len(channels), float(const.reshape(-1)[0]))
    if const_axis is None or const.size != const.shape[const_axis]:
        return None
    return const.reshape(-1).astype(np.float64)[channels]


def _broadcast_axis(const_shape: tuple[int, ...], axis: int, rank: int) -> int | None | bool:
    """Where a constant broadcast against a rank-`rank` tensor holds its channels.

    Returns the constant's axis aligned with `axis` when that axis has size > 1, None when the
    constant is the same for every channel, and False when it would broadcast across channels or
    widen the tensor (more dims than the tensor, or a size > 1 on the batch axis)."""
    if len(const_shape) > rank:
        return False
    const_axis = axis - (rank - len(const_shape))
    batch_axis = 0 - (rank - len(const_shape))
    if batch_axis >= 0 and const_shape[batch_axis] != 1:
        return False
    if const_axis < 0 or const_shape[const_axis] == 1:
        return None
    return const_axis
