"""Prune points: the conv layers whose output channels fine-pruning can measure and remove.

A prune point is a Conv's output channels as seen at the activation tensor after
the Conv's channel-wise chain (BN, activation, pooling, zero padding, layout
Transposes, per-channel affine constants; see fp_onnx/channel_ops.py). The chain
follows the single consumer of each tensor and stops at a tensor with several
consumers, a graph output, or a node that is not channel-wise. The activation
tensor at the end is what profiling records (paper section 3: "average
activation of each neuron" of the last convolutional layer).

The default prune point is the last Conv (in topological order) whose output is
a feature map rather than class scores: a conv classifier such as SqueezeNet's
final 1x1 conv, whose chain reaches a graph output through pooling, reshaping
and softmax only, is skipped.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import onnx
import onnx_graphsurgeon as gs

from fp_onnx.channel_ops import channel_rule
from fp_onnx.errors import BadModelError, BadOptionError
from fp_onnx.graph import (
    conv_groups, data_inputs, import_graph, input_constant, is_graph_output, nodes_by_name, producer, shape_of,
)

# Ops that carry weights: reaching one means the conv's output is still a feature for a later layer.
_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "LSTM", "GRU", "RNN"})


@dataclass(frozen=True)
class PrunePoint:
    """One prunable conv layer.

    conv / conv_output: the Conv node and its output tensor.
    tensor: the activation tensor at the end of the channel-wise chain (what profile records).
    chain: node names after the Conv up to and including the producer of `tensor` (empty when
        `tensor` is `conv_output`).
    channels: number of output channels; channel_axis: the axis of `tensor` holding them (1 for
        NCHW, 3 for NHWC after a layout Transpose); spatial: the other non-batch dims of `tensor`
        (ints, str for symbolic dims; empty when unknown).
    groups: the Conv's `group` attribute (depthwise convs are prune points too).
    """

    conv: str
    conv_output: str
    tensor: str
    chain: tuple[str, ...]
    channels: int
    channel_axis: int
    spatial: tuple
    is_default: bool
    groups: int = 1

    def to_dict(self) -> dict:
        data = asdict(self)
        data["chain"], data["spatial"] = list(self.chain), list(self.spatial)
        return data


def find_prune_points(model: onnx.ModelProto) -> list[PrunePoint]:
    """Every Conv of `model` as a prune point, in topological order; exactly one `is_default`.

    `model` must have inferred shapes and named nodes (fp_onnx.loading.load_model guarantees both).
    Raises BadModelError when the model has no Conv with a known channel count.
    """
    graph = import_graph(model)
    points = [p for p in (_trace(graph, node) for node in graph.nodes if node.op == "Conv") if p is not None]
    if not points:
        raise BadModelError(f"model '{graph.name}' has no Conv layer; fine-pruning needs a convolutional "
                            "feature map to prune")
    default = _default_index(graph, points)
    return [replace(p, is_default=i == default) for i, p in enumerate(points)]


def resolve_prune_point(model: onnx.ModelProto, layer: str | None, *, model_name: str = "MODEL") -> PrunePoint:
    """The prune point named by `layer`: a Conv node name, its output tensor, or any node or tensor
    in its chain; None gives the default. `model_name` only appears in error messages."""
    points = find_prune_points(model)
    if layer is None:
        return next(p for p in points if p.is_default)
    for point in points:
        if layer in _names_of(point, model):
            return point
    hint = f"run `fp-onnx layers {model_name}` to list candidates"
    op_type = _op_type_of(model, layer)
    if op_type is None:
        raise BadOptionError(f"no layer named '{layer}' in model; {hint}")
    raise BadOptionError(f"layer '{layer}' is a {op_type}, not a conv feature map; {hint}")


# --------------------------------------------------------------------------- tracing
def _trace(graph: gs.Graph, conv: gs.Node) -> PrunePoint | None:
    tensor = conv.outputs[0]
    weight = input_constant(conv, 1)
    shape = shape_of(tensor)
    channels = shape[1] if shape and isinstance(shape[1], int) else (weight.shape[0] if weight is not None else None)
    if channels is None:
        return None
    rank = len(shape) if shape else (weight.ndim if weight is not None else 4)
    axis, chain = 1, []
    while not is_graph_output(graph, tensor) and len(tensor.outputs) == 1:
        node = tensor.outputs[0]
        indices = data_inputs(node, tensor)
        rule = channel_rule(node, indices[0], axis, rank) if len(indices) == 1 else None
        if rule is None:
            break
        chain.append(node.name)
        tensor, axis = node.outputs[0], rule.output_axis
    shape = shape_of(tensor)
    spatial = tuple(d for i, d in enumerate(shape) if i not in (0, axis)) if shape else ()
    return PrunePoint(conv=conv.name, conv_output=conv.outputs[0].name, tensor=tensor.name, chain=tuple(chain),
                      channels=int(channels), channel_axis=axis, spatial=spatial, is_default=False,
                      groups=conv_groups(conv))


def _default_index(graph: gs.Graph, points: list[PrunePoint]) -> int:
    """The last point that is not a conv classifier; the last point if all of them are."""
    tensors = graph.tensors()
    for i in range(len(points) - 1, -1, -1):
        if not _is_conv_classifier(graph, tensors[points[i].tensor]):
            return i
    return len(points) - 1


def _is_conv_classifier(graph: gs.Graph, start: gs.Tensor) -> bool:
    """True when every path from `start` reaches a graph output without another weighted layer."""
    stack, seen, reaches_output = [start], set(), False
    while stack:
        tensor = stack.pop()
        if tensor.name in seen:
            continue
        seen.add(tensor.name)
        reaches_output |= is_graph_output(graph, tensor)
        for node in tensor.outputs:
            if node.op in _WEIGHTED_OPS:
                return False
            stack.extend(node.outputs)
    return reaches_output


# --------------------------------------------------------------------------- names
def _names_of(point: PrunePoint, model: onnx.ModelProto) -> set[str]:
    names = {point.conv, point.conv_output, point.tensor, *point.chain}
    chain = set(point.chain)
    names.update(out for node in model.graph.node if node.name in chain for out in node.output)
    return names


def _op_type_of(model: onnx.ModelProto, name: str) -> str | None:
    graph = import_graph(model)
    node = nodes_by_name(graph).get(name)
    if node is not None:
        return node.op
    tensor = graph.tensors().get(name)
    if tensor is None:
        return None
    source = producer(tensor)
    if source is None:
        return "graph input" if any(t.name == name for t in graph.inputs) else "constant"
    return f"{source.op} output"
