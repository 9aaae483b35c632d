"""Downstream surgery: every reader of the pruned channels, one handler per op type.

`plan_downstream` visits, in topological order, the nodes that read a tensor whose
channels `removed` (ids in the tensor's original numbering) along `axis` disappear.
Pruned channels are zero at the prune point, but a later op may turn them into a
non-zero constant (BN of 0 is its shift, a depthwise conv of 0 is its bias); the
flow carries these constants and the layer that finally consumes the channels
folds them into its bias, so the pruned model computes exactly what the
zero-masked one does. A handler either consumes the channels (a Conv or
Gemm/MatMul drops the matching weight columns), passes them on with a new
numbering (Concat offsets, Flatten/Reshape flat indices, global pooling,
Squeeze/Unsqueeze, a grouped conv that loses whole groups), or raises `Blocked`
when the channels must keep existing (a graph output, LayerNormalization over the
channels, a residual Add whose other branch keeps them): then `prune_channels`
forces them to zero instead. A node that reads the flow on several inputs (the
Sigmoid·Mul of SiLU, `x * x`) is a join: it passes when every computed input
carries the same channels. Ops without a handler here are handled by the
channel-wise registry (fp_onnx/channel_ops.py) or block.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from fp_onnx.channel_ops import channel_rule
from fp_onnx.graph import axes_of, constant_value, conv_groups, input_constant, is_graph_output, shape_of
from fp_onnx.registry import register
from fp_onnx.surgery.context import Action, Blocked, Surgery
from fp_onnx.surgery.conv import has_bias, plan_remove_groups, whole_groups

MAX_FLATTENED_FEATURES = 1 << 28
"""More flattened features than any classifier head reads; above it the index maps would not fit in memory."""


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

    def same_channels(self, other: Flow) -> bool:
        return (self.axis, self.removed, self.width, self.rank) == (other.axis, other.removed, other.width, other.rank)


def _nonzero(values: np.ndarray | None) -> np.ndarray | None:
    return values if values is not None and np.any(values) else None


Handler = Callable[[Surgery, gs.Node, int, Flow], "list[Flow]"]
_HANDLERS: dict[str, Handler] = {}


def downstream(*op_types: str, replace: bool = False) -> Callable[[Handler], Handler]:
    """Register `handler(surgery, node, input_index, flow) -> onward flows` for readers of type `op_types`.

    A handler plans its edits on `surgery` (nothing changes until the plan is applied), returns
    the flows its outputs carry on (empty when it consumes the channels), or raises `Blocked`
    with the reason the channels must stay. Registering an op type twice raises ValueError unless
    `replace=True`."""

    def add(handler: Handler) -> Handler:
        return register(_HANDLERS, op_types, handler, replace=replace, what="a downstream handler")

    return add


# Elementwise ops that join branches; the flows of their inputs combine channel by channel.
_JOINS = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Max": np.maximum, "Min": np.minimum}


def plan_downstream(s: Surgery, start: Flow) -> None:
    """Plan removing `start.removed` from every node that reads them, in topological order."""
    flows = {start.tensor.name: start}
    heap: list[tuple[int, int, gs.Node]] = []
    queued: set[int] = set()

    def arrive(flow: Flow) -> None:
        if is_graph_output(s.graph, flow.tensor):
            raise Blocked(None, f"tensor '{flow.tensor.name}' is a graph output; its shape must stay")
        flows[flow.tensor.name] = flow
        for node in flow.tensor.outputs:
            if id(node) not in queued:
                queued.add(id(node))
                heapq.heappush(heap, (s.position(node), len(queued), node))

    arrive(start)
    while heap:
        _, _, node = heapq.heappop(heap)
        slots = [i for i, t in enumerate(node.inputs) if t.name in flows]
        computed = [i for i, t in enumerate(node.inputs) if t.name and constant_value(t) is None]
        if len(slots) > 1 or (node.op in _JOINS and len(computed) > 1):
            onward = _join(s, node, slots, computed, flows)
        else:
            onward = _HANDLERS.get(node.op, _channel_wise)(s, node, slots[0], flows[node.inputs[slots[0]].name])
        for flow in onward:
            arrive(flow)


def _join(s: Surgery, node: gs.Node, slots: list[int], computed: list[int], flows: dict[str, Flow]) -> list[Flow]:
    """Every computed input must carry the same channels: a residual Add whose other branch keeps
    them cannot lose them (the masked reference only zeroes the prune point)."""
    if node.op not in _JOINS:
        raise Blocked(node, f"{node.op} '{node.name}' reads the pruned channels on two inputs")
    missing = [node.inputs[i].name for i in computed if i not in slots]
    if missing:
        raise Blocked(node, f"{node.op} '{node.name}' combines the pruned channels with '{missing[0]}', which "
                            "keeps them (e.g. the other branch of a residual connection), so they must stay")
    first = flows[node.inputs[slots[0]].name]
    arriving = [flows[node.inputs[i].name] for i in slots]
    if not all(first.same_channels(flow) for flow in arriving):
        raise Blocked(node, f"{node.op} '{node.name}' joins different channel sets")
    values = arriving[0].constants()
    for flow in arriving[1:]:
        values = _JOINS[node.op](values, flow.constants())
    s.record(node, Action.PASSED, f"joins {len(slots)} inputs that lose the same channels")
    return [_onward(node, first, values=_nonzero(values))]


def _onward(node: gs.Node, flow: Flow, **changes) -> Flow:
    return replace(flow, tensor=node.outputs[0], **changes)


def _channel_wise(s: Surgery, node: gs.Node, index: int, flow: Flow) -> list[Flow]:
    rule = channel_rule(node, index, flow.axis, flow.rank)
    if rule is None:
        raise Blocked(node, f"{node.op} '{node.name}' needs all channels of '{flow.tensor.name}' "
                            "(it mixes them, or the other operand keeps them)")
    values = rule.constant(flow.constants(), list(flow.removed))
    if values is None:
        raise Blocked(node, f"{node.op} '{node.name}' would make the pruned channels non-constant")
    for param, axis in rule.params:
        s.delete_channels(node, param, axis, flow.removed, flow.width)
    s.record(node, Action.SLICED if rule.params else Action.PASSED,
             "per-channel parameters removed" if rule.params else "channel-wise, nothing to remove")
    return [_onward(node, flow, axis=rule.output_axis, values=_nonzero(values))]


@downstream("Conv")
def _conv(s: Surgery, node: gs.Node, index: int, flow: Flow) -> list[Flow]:
    """A dense conv drops weight input columns; a grouped conv drops whole groups and passes its
    removed outputs on (depthwise convs in MobileNet)."""
    if index != 0 or flow.axis != 1:
        raise Blocked(node, f"Conv '{node.name}' reads the channels as weights or on another axis")
    if flow.values is not None and _conv_pads(node):
        raise Blocked(node, f"Conv '{node.name}' pads its input, so a constant input channel does not fold "
                            "into its bias")
    count = conv_groups(node)
    if count == 1:
        if flow.values is not None:
            add_to_bias(s, node, _kernel_sums(s, node)[:, list(flow.removed)] @ flow.values)
        s.delete_channels(node, 1, 1, flow.removed, flow.width)
        s.record(node, Action.REMOVED, f"{len(flow.removed)} input channels (weight columns)")
        return []
    in_per_group = flow.width // count
    groups = whole_groups(flow.removed, in_per_group, "input", node)
    outputs = int(s.param_shape(node, 1)[0])
    out_per_group = outputs // count
    values = None
    if flow.values is not None or has_bias(node):
        # What each removed group now outputs everywhere: its kernel sums times the constant
        # inputs, plus its bias.
        kernel_sums = _kernel_sums(s, node)
        inputs = flow.constants().reshape(len(groups), in_per_group)
        bias = s.param(node, 2).astype(np.float64) if has_bias(node) else np.zeros(outputs)
        values = np.concatenate([kernel_sums[g * out_per_group:(g + 1) * out_per_group] @ inputs[i]
                                 + bias[g * out_per_group:(g + 1) * out_per_group] for i, g in enumerate(groups)])
    removed, width = plan_remove_groups(s, node, groups)
    return [Flow(node.outputs[0], 1, tuple(removed), width, flow.rank, _nonzero(values))]


def _kernel_sums(s: Surgery, node: gs.Node) -> np.ndarray:
    """Per (output, input) channel: what a constant 1 in that input adds to that output (sum of its kernel)."""
    weight = s.param(node, 1).astype(np.float64)
    return weight.reshape(weight.shape[0], weight.shape[1], -1).sum(axis=2)


def _conv_pads(node: gs.Node) -> bool:
    return any(node.attrs.get("pads", ())) or node.attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER")


def add_to_bias(s: Surgery, node: gs.Node, delta: np.ndarray, index: int = 2, scale: float = 1.0) -> None:
    """Plan adding `delta` (one entry per output) to the bias input `index`, creating it when absent."""
    if index < len(node.inputs) and node.inputs[index].name:
        dtype = s.param(node, index).dtype

        def fold() -> None:
            bias = s.param(node, index)
            s.set_param(node, index, (np.broadcast_to(bias, delta.shape) + delta / scale).astype(dtype))
    else:
        dtype = s.param(node, 1).dtype
        name = s.unique_name(f"{node.name}__bias")

        def fold() -> None:
            while len(node.inputs) < index:
                node.inputs.append(gs.Variable.empty())
            node.inputs.append(gs.Constant(name, (delta / scale).astype(dtype)))
    s.edit(fold)
    s.record(node, Action.FOLDED, "constant contribution of the pruned channels added to its bias")


@downstream("Concat")
def _concat(s: Surgery, node: gs.Node, index: int, flow: Flow) -> list[Flow]:
    """Channels of input k of a channel Concat sit after the widths of inputs 0..k-1."""
    axis = int(node.attrs["axis"]) % flow.rank
    widths = [(shape_of(t) or (None,) * flow.rank)[axis] for t in node.inputs]
    if axis != flow.axis or not all(isinstance(w, int) for w in widths):
        raise Blocked(node, f"Concat '{node.name}' joins on another axis or has unknown input widths")
    offset = sum(widths[:index])
    s.record(node, Action.PASSED, f"channels shifted by {offset}")  # constants (flow.values) pass unchanged
    return [_onward(node, flow, removed=tuple(offset + c for c in flow.removed), width=sum(widths))]


@downstream("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def _global_pool(s: Surgery, node: gs.Node, index: int, flow: Flow) -> list[Flow]:
    if flow.axis != 1:
        raise Blocked(node, f"{node.op} '{node.name}' pools channels-first tensors only")
    if node.op == "GlobalLpPool":
        flow.require_zero(node)  # the mean or max of a constant is that constant
    s.record(node, Action.PASSED, "global pooling keeps channels")
    return [_onward(node, flow)]


@downstream("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2")
def _reduce(s: Surgery, node: gs.Node, index: int, flow: Flow) -> list[Flow]:
    """Reducing the spatial axes keeps the channels; without keepdims the channel axis moves left."""
    axes = _dropped_axes(node, index, flow, "reduces over")
    if node.op in ("ReduceSum", "ReduceL2"):
        flow.require_zero(node)  # mean, max and min of a constant are that constant
    if node.attrs.get("keepdims", 1):
        axes = set()
    s.record(node, Action.PASSED, "reduction over non-channel axes")
    return [_onward(node, flow, axis=flow.axis - sum(a < flow.axis for a in axes), rank=flow.rank - len(axes))]


@downstream("Squeeze")
def _squeeze(s: Surgery, node: gs.Node, index: int, flow: Flow) -> list[Flow]:
    """Dropping size-1 axes (after global pooling: tf2onnx writes Squeeze [2, 3]) moves the channel axis."""
    axes = _dropped_axes(node, index, flow, "squeezes")
    s.record(node, Action.PASSED, "size-1 axes dropped")
    return [_onward(node, flow, axis=flow.axis - sum(a < flow.axis for a in axes), rank=flow.rank - len(axes))]


def _dropped_axes(node: gs.Node, index: int, flow: Flow, verb: str) -> set[int]:
    """The axes a reduction or Squeeze takes away; Blocked when unknown or when they include the channels."""
    axes = axes_of(node)
    if index != 0 or axes is None:
        raise Blocked(node, f"{node.op} '{node.name}' {verb} unknown axes")
    axes = {a % flow.rank for a in axes}
    if flow.axis in axes:
        raise Blocked(node, f"{node.op} '{node.name}' {verb} the channel axis")
    return axes


@downstream("Unsqueeze")
def _unsqueeze(s: Surgery, node: gs.Node, index: int, flow: Flow) -> list[Flow]:
    axes = axes_of(node)
    if index != 0 or axes is None:
        raise Blocked(node, f"Unsqueeze '{node.name}' inserts unknown axes")
    rank = flow.rank + len(axes)
    inserted = sorted(a % rank for a in axes)
    kept_positions = [i for i in range(rank) if i not in inserted]
    s.record(node, Action.PASSED, "size-1 axes inserted")
    return [_onward(node, flow, axis=kept_positions[flow.axis], rank=rank)]


@downstream("LayerNormalization")
def _layer_norm(s: Surgery, node: gs.Node, index: int, flow: Flow) -> list[Flow]:
    """LayerNormalization over the channel axis: its mean and variance use every channel."""
    axis = int(node.attrs.get("axis", -1)) % flow.rank
    if index == 0 and flow.axis >= axis:
        raise Blocked(node, f"LayerNormalization '{node.name}' normalises over the channel axis: its mean and "
                            "variance depend on every channel, so the pruned channels (zero in the reference) "
                            "cannot be removed exactly")
    raise Blocked(node, f"LayerNormalization '{node.name}' reads the channels as a scale or bias")


@downstream("Flatten")
def _flatten(s: Surgery, node: gs.Node, index: int, flow: Flow) -> list[Flow]:
    if int(node.attrs.get("axis", 1)) != 1:
        raise Blocked(node, f"Flatten '{node.name}' does not flatten to (batch, features)")
    flat = _flattened(node, flow)
    s.record(node, Action.PASSED, f"{len(flat.removed)} flattened features removed")
    return [flat]


@downstream("Reshape")
def _reshape(s: Surgery, node: gs.Node, index: int, flow: Flow) -> list[Flow]:
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
        s.edit(lambda: s.set_param(node, 1, new_target))
        s.record(node, Action.SLICED, f"shape constant {target.tolist()} -> {new_target.tolist()}")
    else:
        s.record(node, Action.PASSED, f"{len(flat.removed)} flattened features removed")
    return [flat]


def _flattened(node: gs.Node, flow: Flow) -> Flow:
    """The flat (batch, features) view: feature index of (c, rest) is its C-order index in the
    non-batch dims, i.e. c*H*W + h*W + w for NCHW and (h*W + w)*C + c for NHWC."""
    shape = shape_of(flow.tensor)
    dims = shape[1:] if shape else None
    if not dims or not all(isinstance(d, int) for d in dims):
        raise Blocked(node, f"{node.op} '{node.name}' flattens a tensor of unknown shape")
    if math.prod(dims) > MAX_FLATTENED_FEATURES:  # Python ints: a hostile shape must not overflow the check
        raise Blocked(node, f"{node.op} '{node.name}' flattens {math.prod(dims)} features, more than the "
                            f"{MAX_FLATTENED_FEATURES} a classifier head can read")
    grid = np.arange(math.prod(dims)).reshape(dims)
    removed = np.take(grid, list(flow.removed), axis=flow.axis - 1).reshape(-1)
    value_grid = np.zeros(grid.shape)
    np.moveaxis(value_grid, flow.axis - 1, 0)[list(flow.removed)] = flow.constants().reshape(
        (-1,) + (1,) * (len(dims) - 1))
    order = np.argsort(removed)
    values = value_grid.reshape(-1)[removed[order]]
    return Flow(node.outputs[0], 1, tuple(int(i) for i in removed[order]), grid.size, 2, _nonzero(values))


@downstream("Gemm")
def _gemm(s: Surgery, node: gs.Node, index: int, flow: Flow) -> list[Flow]:
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
    which = "columns" if weight_axis else "rows"
    s.record(node, Action.REMOVED, f"{len(flow.removed)} input features (weight {which})")
    return []


@downstream("MatMul")
def _matmul(s: Surgery, node: gs.Node, index: int, flow: Flow) -> list[Flow]:
    """Y = A B with a constant 2-D B: features are A's last axis and B's rows."""
    weight = input_constant(node, 1)
    if index != 0 or flow.axis != flow.rank - 1 or weight is None or weight.ndim != 2:
        raise Blocked(node, f"MatMul '{node.name}' does not multiply the features by a constant matrix")
    flow.require_zero(node)
    s.delete_channels(node, 1, 0, flow.removed, flow.width)
    s.record(node, Action.REMOVED, f"{len(flow.removed)} input features (weight rows)")
    return []
