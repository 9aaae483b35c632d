"""Downstream surgery: every reader of the pruned channels, one handler per op type.

`follow` visits the readers of a tensor whose channels `removed` (ids in the
tensor's original numbering) along `axis` disappear. Pruned channels are zero at
the prune point, but a later op may turn them into a non-zero constant (BN of 0
is its shift, a depthwise conv of 0 is its bias); the flow carries these
constants and the layer that finally consumes the channels folds them into its
bias, so the pruned model computes exactly what the zero-masked one does. A handler either consumes
the channels (a Conv or Gemm/MatMul drops the matching weight columns), passes
them on with a new numbering (Concat offsets, Flatten/Reshape flat indices,
global pooling, a grouped conv that loses whole groups), or raises `Blocked`
when the channels must keep existing (a residual Add, a graph output): then
`prune_channels` forces them to zero instead. Ops without a handler here are
handled by the channel-wise registry (fp_onnx/channel_ops.py) or block.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from fp_onnx.channel_ops import channel_rule
from fp_onnx.graph import conv_groups, data_inputs, input_constant, is_graph_output, shape_of
from fp_onnx.surgery.context import Blocked, Surgery
from fp_onnx.surgery.conv import has_bias, remove_groups, whole_groups


@dataclass(frozen=True)
class Flow:
    """Channels `removed` (sorted ids out of `width`) along `axis` of the rank-`rank` `tensor`;
    `values[i]` is the constant that channel removed[i] holds everywhere (None: all zero)."""

    tensor: gs.Tensor
    axis: int
    removed: tuple[int, ...]
    width: int
    rank: int
    values: np.ndarray | None = None

    def constants(self) -> np.ndarray:
        return np.zeros(len(self.removed)) if self.values is None else self.values

    def require_zero(self, node: gs.Node) -> None:
        if self.values is not None:
            raise Blocked(node, f"{node.op} '{node.name}' would receive the pruned channels as non-zero "
                                "constants it cannot fold")


def _nonzero(values: np.ndarray | None) -> np.ndarray | None:
    return values if values is not None and np.any(values) else None


Handler = Callable[[Surgery, gs.Node, int, Flow], None]
_HANDLERS: dict[str, Handler] = {}


def downstream(*op_types: str) -> Callable[[Handler], Handler]:
    """Register `handler(surgery, node, input_index, flow)` for readers of type `op_types`."""

    def register(handler: Handler) -> Handler:
        for op_type in op_types:
            _HANDLERS[op_type] = handler
        return handler

    return register


def follow(s: Surgery, flow: Flow) -> None:
    """Remove `flow.removed` from every reader of `flow.tensor`, recursively."""
    if is_graph_output(s.graph, flow.tensor):
        raise Blocked(None, f"tensor '{flow.tensor.name}' is a graph output; its shape must stay")
    for node in list(flow.tensor.outputs):
        indices = data_inputs(node, flow.tensor)
        if len(indices) != 1:
            raise Blocked(node, f"{node.op} '{node.name}' reads '{flow.tensor.name}' twice")
        s.visit(node)
        _HANDLERS.get(node.op, _channel_wise)(s, node, indices[0], flow)


def _onward(node: gs.Node, flow: Flow, **changes) -> Flow:
    return replace(flow, tensor=node.outputs[0], **changes)


def _channel_wise(s: Surgery, node: gs.Node, index: int, flow: Flow) -> None:
    rule = channel_rule(node, index, flow.axis, flow.rank)
    if rule is None:
        raise Blocked(node, f"{node.op} '{node.name}' needs all channels of '{flow.tensor.name}' "
                            "(it mixes them, or the other operand keeps them)")
    values = rule.constant(flow.constants(), list(flow.removed))
    if values is None:
        raise Blocked(node, f"{node.op} '{node.name}' would make the pruned channels non-constant")
    for param, axis in rule.params:
        s.delete_channels(node, param, axis, flow.removed, flow.width)
    s.log(node, "sliced" if rule.params else "passed", "per-channel parameters removed" if rule.params
          else "channel-wise, nothing to remove")
    follow(s, _onward(node, flow, axis=rule.output_axis, values=_nonzero(values)))


@downstream("Conv")
def _conv(s: Surgery, node: gs.Node, index: int, flow: Flow) -> None:
    """A dense conv drops weight input columns; a grouped conv drops whole groups and passes its
    removed outputs on (depthwise convs in MobileNet)."""
    if index != 0 or flow.axis != 1:
        raise Blocked(node, f"Conv '{node.name}' reads the channels as weights or on another axis")
    if flow.values is not None and _conv_pads(node):
        raise Blocked(node, f"Conv '{node.name}' pads its input, so a constant input channel does not fold "
                            "into its bias")
    count = conv_groups(node)
    weight = s.param(node, 1).astype(np.float64)
    # Per output channel, what a constant input channel adds: value * (sum of its kernel).
    kernel_sums = weight.reshape(weight.shape[0], weight.shape[1], -1).sum(axis=2)
    if count == 1:
        if flow.values is not None:
            add_to_bias(s, node, kernel_sums[:, list(flow.removed)] @ flow.values)
        s.delete_channels(node, 1, 1, flow.removed, flow.width)
        s.log(node, "removed", f"input channels {list(flow.removed)} (weight columns)")
        return
    in_per_group = flow.width // count
    groups = whole_groups(flow.removed, in_per_group, "input", node)
    out_per_group = weight.shape[0] // count
    inputs = flow.constants().reshape(len(groups), in_per_group)
    bias = s.param(node, 2).astype(np.float64) if has_bias(node) else np.zeros(weight.shape[0])
    values = np.concatenate([kernel_sums[g * out_per_group:(g + 1) * out_per_group] @ inputs[i]
                             + bias[g * out_per_group:(g + 1) * out_per_group] for i, g in enumerate(groups)])
    removed, width = remove_groups(s, node, groups)
    follow(s, Flow(node.outputs[0], 1, tuple(removed), width, flow.rank, _nonzero(values)))


def _conv_pads(node: gs.Node) -> bool:
    return any(node.attrs.get("pads", ())) or node.attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER")


def add_to_bias(s: Surgery, node: gs.Node, delta: np.ndarray, index: int = 2, scale: float = 1.0) -> None:
    """Add `delta` (one entry per output) to the bias input `index`, creating it when absent."""
    if index < len(node.inputs) and node.inputs[index].name:
        bias = s.param(node, index)
        new = np.broadcast_to(bias, delta.shape) + delta / scale
        s.set_param(node, index, new.astype(bias.dtype))
    else:
        dtype = s.param(node, 1).dtype
        while len(node.inputs) < index:
            node.inputs.append(gs.Variable.empty())
        node.inputs.append(gs.Constant(s.unique_name(f"{node.name}__bias"), (delta / scale).astype(dtype)))
    s.log(node, "folded", "constant contribution of the pruned channels added to its bias")


@downstream("Concat")
def _concat(s: Surgery, node: gs.Node, index: int, flow: Flow) -> None:
    """Channels of input k of a channel Concat sit after the widths of inputs 0..k-1."""
    axis = int(node.attrs["axis"]) % flow.rank
    widths = [(shape_of(t) or (None,) * flow.rank)[axis] for t in node.inputs]
    if axis != flow.axis or not all(isinstance(w, int) for w in widths):
        raise Blocked(node, f"Concat '{node.name}' joins on another axis or has unknown input widths")
    offset = sum(widths[:index])
    s.log(node, "passed", f"channels shifted by {offset}")  # constants (flow.values) pass unchanged
    follow(s, _onward(node, flow, removed=tuple(offset + c for c in flow.removed), width=sum(widths)))


@downstream("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def _global_pool(s: Surgery, node: gs.Node, index: int, flow: Flow) -> None:
    if flow.axis != 1:
        raise Blocked(node, f"{node.op} '{node.name}' pools channels-first tensors only")
    if node.op == "GlobalLpPool":
        flow.require_zero(node)  # the mean or max of a constant is that constant
    s.log(node, "passed", "global pooling keeps channels")
    follow(s, _onward(node, flow))


@downstream("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2")
def _reduce(s: Surgery, node: gs.Node, index: int, flow: Flow) -> None:
    """Reducing the spatial axes keeps the channels; without keepdims the channel axis moves left."""
    axes = node.attrs.get("axes")
    if axes is None:
        axes = input_constant(node, 1)  # opset 18 (ReduceSum: 13) moved axes to an input
    if index != 0 or axes is None:
        raise Blocked(node, f"{node.op} '{node.name}' reduces over unknown axes")
    axes = {int(a) % flow.rank for a in np.asarray(axes).reshape(-1)}
    if flow.axis in axes:
        raise Blocked(node, f"{node.op} '{node.name}' reduces over the channel axis")
    if node.op in ("ReduceSum", "ReduceL2"):
        flow.require_zero(node)  # mean, max and min of a constant are that constant
    keep = bool(node.attrs.get("keepdims", 1))
    axis = flow.axis if keep else flow.axis - sum(a < flow.axis for a in axes)
    s.log(node, "passed", "reduction over non-channel axes")
    follow(s, _onward(node, flow, axis=axis, rank=flow.rank if keep else flow.rank - len(axes)))


@downstream("Flatten")
def _flatten(s: Surgery, node: gs.Node, index: int, flow: Flow) -> None:
    if int(node.attrs.get("axis", 1)) != 1:
        raise Blocked(node, f"Flatten '{node.name}' does not flatten to (batch, features)")
    flat = _flattened(node, flow)
    s.log(node, "passed", f"{len(flat.removed)} flattened features removed")
    follow(s, flat)


@downstream("Reshape")
def _reshape(s: Surgery, node: gs.Node, index: int, flow: Flow) -> None:
    """A Reshape to (batch, features) flattens; a constant feature count in its shape is updated
    (tf2onnx writes [-1, K], old converters [1, K], the dynamo exporter [-1, K])."""
    target = input_constant(node, 1)
    flat = _flattened(node, flow)
    if index != 0 or target is None or target.shape != (2,) or target[1] not in (-1, flat.width) \
            or target[0] not in (-1, 0, 1):
        raise Blocked(node, f"Reshape '{node.name}' is not a flatten to (batch, features)")
    if target[1] == flat.width:
        new_target = target.copy()
        new_target[1] = flat.width - len(flat.removed)
        s.set_param(node, 1, new_target)
        s.log(node, "sliced", f"shape constant {target.tolist()} -> {new_target.tolist()}")
    else:
        s.log(node, "passed", f"{len(flat.removed)} flattened features removed")
    follow(s, flat)


def _flattened(node: gs.Node, flow: Flow) -> Flow:
    """The flat (batch, features) view: feature index of (c, rest) is its C-order index in the
    non-batch dims, i.e. c*H*W + h*W + w for NCHW and (h*W + w)*C + c for NHWC."""
    shape = shape_of(flow.tensor)
    dims = shape[1:] if shape else None
    if not dims or not all(isinstance(d, int) for d in dims):
        raise Blocked(node, f"{node.op} '{node.name}' flattens a tensor of unknown shape")
    grid = np.arange(int(np.prod(dims))).reshape(dims)
    removed = np.take(grid, list(flow.removed), axis=flow.axis - 1).reshape(-1)
    value_grid = np.zeros(grid.shape)
    np.moveaxis(value_grid, flow.axis - 1, 0)[list(flow.removed)] = flow.constants().reshape(
        (-1,) + (1,) * (len(dims) - 1))
    order = np.argsort(removed)
    values = value_grid.reshape(-1)[removed[order]]
    return Flow(node.outputs[0], 1, tuple(int(i) for i in removed[order]), grid.size, 2, _nonzero(values))


@downstream("Gemm")
def _gemm(s: Surgery, node: gs.Node, index: int, flow: Flow) -> None:
    """Y = A B' + C: features are A's columns, B's rows (transB=0) or columns (transB=1)."""
    if index != 0 or flow.axis != 1 or flow.rank != 2 or node.attrs.get("transA", 0):
        raise Blocked(node, f"Gemm '{node.name}' does not read the features as its A input")
    weight_axis = 1 if node.attrs.get("transB", 0) else 0
    if flow.values is not None:
        weight = np.moveaxis(s.param(node, 1).astype(np.float64), weight_axis, 0)  # (features, outputs)
        beta = float(node.attrs.get("beta", 1.0))
        if beta == 0.0:
            raise Blocked(node, f"Gemm '{node.name}' has beta 0, no bias to fold the pruned channels into")
        add_to_bias(s, node, float(node.attrs.get("alpha", 1.0)) * (flow.values @ weight[list(flow.removed)]),
                    scale=beta)
    s.delete_channels(node, 1, weight_axis, flow.removed, flow.width)
    s.log(node, "removed", f"{len(flow.removed)} input features (weight {'columns' if weight_axis else 'rows'})")


@downstream("MatMul")
def _matmul(s: Surgery, node: gs.Node, index: int, flow: Flow) -> None:
    """Y = A B with a constant 2-D B: features are A's last axis and B's rows."""
    weight = input_constant(node, 1)
    if index != 0 or flow.axis != flow.rank - 1 or weight is None or weight.ndim != 2:
        raise Blocked(node, f"MatMul '{node.name}' does not multiply the features by a constant matrix")
    flow.require_zero(node)
    s.delete_channels(node, 1, 0, flow.removed, flow.width)
    s.log(node, "removed", f"{len(flow.removed)} input features (weight rows)")
