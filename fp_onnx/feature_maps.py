"""Feature tensors: the channelled tensors of a graph, where fine-pruning can measure and cut.

A *feature tensor* is a tensor of rank >= 3 whose channel axis is known (1 for
NCHW, the last axis after a channels-last Transpose or in a channels-last block)
and that ends a *chain*: the op that starts a block's output (a Conv, a residual
Add, a Concat, a squeeze-excitation Mul, ...) followed by the channel-wise ops
that only it reads (BN, activations, SiLU written as x·Sigmoid(x), pooling,
per-channel affine constants, layout Transposes; see fp_onnx/channel_ops.py).
The chain stops at a tensor with several readers, a graph output, or an op that
mixes channels. Tensors made from globally pooled features (an SE branch, the
head after global pooling) are not feature maps and are left out.

Channel axes are inferred forwards in topological order from the ops that fix
them: a Conv writes channels on axis 1, a MatMul by a constant matrix on the last
axis; channel-wise ops, joins, Concat, normalisations, Squeeze/Unsqueeze and
reductions over other axes carry them on.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from fp_onnx.channel_ops import channel_rule
from fp_onnx.graph import axes_of, constant_value, data_inputs, is_graph_output, shape_of

_GLOBAL_POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
_REDUCTIONS = frozenset({"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL2"})
_SAME_LAYOUT = frozenset({"LayerNormalization", "InstanceNormalization", "Dropout", "Identity"})
_JOINS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min"})
_GATES = frozenset({"Sigmoid", "HardSigmoid", "Tanh"})


@dataclass(frozen=True)
class Channels:
    """Where a tensor keeps its channels: `axis` of a rank-`rank` tensor; `pooled` when it was made
    from globally pooled features (no spatial extent left to be a feature map)."""

    axis: int
    rank: int
    pooled: bool = False


@dataclass(frozen=True)
class FeatureTensor:
    """A chain's last tensor: `chain` lists its nodes, the block's first op first."""

    tensor: gs.Tensor
    channels: Channels
    width: int
    chain: tuple[gs.Node, ...]

    @property
    def producer(self) -> gs.Node:
        return self.chain[-1]

    def spatial(self) -> tuple:
        shape = shape_of(self.tensor) or ()
        return tuple(d for i, d in enumerate(shape) if i not in (0, self.channels.axis))


def feature_tensors(graph: gs.Graph) -> list[FeatureTensor]:
    """Every feature tensor of `graph`, in topological order (the graph gets topologically sorted)."""
    nodes = graph.toposort().nodes
    axes = channel_axes(nodes)
    continued: set[str] = set()
    steps: dict[str, tuple[tuple[gs.Node, ...], gs.Tensor]] = {}
    for node in nodes:
        for tensor in node.outputs:
            info = axes.get(tensor.name)
            step = _continuation(graph, tensor, info) if info is not None else None
            # A step whose result has no known channel axis (an op the axis analysis does not know,
            # such as a contrib op) ends the chain where the channels are still known.
            if step is not None and step[1].name in axes:
                steps[tensor.name] = step
                continued.update(t.name for n in step[0] for t in n.outputs)  # the gate's output too
    found = []
    for node in nodes:
        for tensor in node.outputs:
            info = axes.get(tensor.name)
            if info is None or tensor.name in continued or info.pooled:
                continue
            chain, end = [node], tensor
            while end.name in steps:
                more, end = steps[end.name]
                chain.extend(more)
            end_info = axes[end.name]
            shape = shape_of(end)
            if shape is None or len(shape) < 3 or not isinstance(shape[end_info.axis], int):
                continue
            found.append(FeatureTensor(end, end_info, int(shape[end_info.axis]), tuple(chain)))
    position = {id(node): i for i, node in enumerate(nodes)}
    return sorted(found, key=lambda f: position[id(f.producer)])


def _continuation(graph: gs.Graph, tensor: gs.Tensor,
                  info: Channels) -> tuple[tuple[gs.Node, ...], gs.Tensor] | None:
    """The node(s) that carry `tensor`'s channels on as one chain step, and the tensor they make:
    its only reader when that is channel-wise, or the Gate·Mul pair of x·Sigmoid(x) (SiLU, and
    HardSwish as x·HardSigmoid(x))."""
    readers = tensor.outputs
    if is_graph_output(graph, tensor) or not readers:
        return None
    if len(readers) == 1:
        node = readers[0]
        slots = data_inputs(node, tensor)
        if len(slots) == 1 and channel_rule(node, slots[0], info.axis, info.rank) is not None:
            return (node,), node.outputs[0]
        return None
    gate = self_gate(tensor)
    if gate is None:
        return None
    mul = _gate_mul(tensor, gate)
    return (gate, mul), mul.outputs[0]


def self_gate(tensor: gs.Tensor) -> gs.Node | None:
    """The gate node g when `tensor` x is read exactly by g (Sigmoid, HardSigmoid, Tanh) and by a Mul
    that multiplies x by g(x): the x·Sigmoid(x) pattern exporters write for SiLU."""
    readers = tensor.outputs
    if len(readers) != 2:
        return None
    gates = [n for n in readers if n.op in _GATES and n.inputs[0] is tensor]
    if len(gates) != 1:
        return None
    gate = gates[0]
    mul = _gate_mul(tensor, gate)
    return gate if mul is not None else None


def _gate_mul(tensor: gs.Tensor, gate: gs.Node) -> gs.Node | None:
    gated = gate.outputs[0]
    muls = [n for n in tensor.outputs if n.op == "Mul" and n is not gate]
    if len(muls) != 1 or gated.outputs != [muls[0]] or len(gate.outputs) != 1:
        return None
    mul = muls[0]
    return mul if {id(t) for t in mul.inputs} == {id(tensor), id(gated)} else None


# --------------------------------------------------------------------------- channel axes
def channel_axes(nodes: list[gs.Node]) -> dict[str, Channels]:
    """Tensor name -> where its channels are, for every tensor whose channel axis follows from the
    ops that make it (`nodes` in topological order)."""
    axes: dict[str, Channels] = {}
    for node in nodes:
        info = _output_channels(node, axes)
        if info is not None and node.outputs:
            axes[node.outputs[0].name] = info
    return axes


def _rank(tensor: gs.Tensor) -> int | None:
    shape = shape_of(tensor)
    return None if shape is None else len(shape)


def _output_channels(node: gs.Node, axes: dict[str, Channels]) -> Channels | None:
    rank = _rank(node.outputs[0]) if node.outputs else None
    if rank is None:
        return None
    if node.op in ("Conv", "ConvTranspose"):
        return Channels(1, rank, _pooled_inputs(node, axes))
    computed = [i for i, t in enumerate(node.inputs) if t.name and constant_value(t) is None]
    known = [(i, axes[node.inputs[i].name]) for i in computed if node.inputs[i].name in axes]
    if node.op in ("MatMul", "Gemm") and len(computed) == 1 and computed[0] == 0:
        return Channels(rank - 1 if node.op == "MatMul" else 1, rank, bool(known and known[0][1].pooled))
    if not known:
        return None
    slot, info = known[0]
    if node.op in _GLOBAL_POOLS:
        return Channels(info.axis, rank, True)
    if node.op in _REDUCTIONS or node.op in ("Squeeze", "Unsqueeze"):
        return _reshaped(node, info, rank)
    if node.op in _SAME_LAYOUT and slot == 0:
        return Channels(info.axis, rank, info.pooled)
    if node.op == "Concat":
        return Channels(info.axis, rank, all(i.pooled for _, i in known)) \
            if int(node.attrs.get("axis", 1)) % rank == info.axis else None
    if node.op in _JOINS and len(computed) > 1:
        axis = info.axis + (rank - info.rank)
        return Channels(axis, rank, all(i.pooled for _, i in known))
    rule = channel_rule(node, slot, info.axis, info.rank) if len(computed) == 1 else None
    return None if rule is None else Channels(rule.output_axis, rank, info.pooled)


def _pooled_inputs(node: gs.Node, axes: dict[str, Channels]) -> bool:
    source = axes.get(node.inputs[0].name) if node.inputs else None
    return bool(source and source.pooled)


def _reshaped(node: gs.Node, info: Channels, rank: int) -> Channels | None:
    """Reductions, Squeeze and Unsqueeze: the channel axis shifts by the axes removed or inserted before it."""
    axes = axes_of(node)
    if axes is None:
        return None
    if node.op == "Unsqueeze":
        inserted = sorted(a % rank for a in axes)
        kept = [i for i in range(rank) if i not in inserted]
        return Channels(kept[info.axis], rank, info.pooled) if info.axis < len(kept) else None
    removed = {a % info.rank for a in axes}
    if info.axis in removed:
        return None
    pooled = info.pooled or (node.op in _REDUCTIONS and removed >= set(range(info.rank)) - {0, info.axis})
    keep = node.op in _REDUCTIONS and bool(node.attrs.get("keepdims", 1))
    axis = info.axis if keep else info.axis - sum(a < info.axis for a in removed)
    return Channels(axis, rank, pooled)
