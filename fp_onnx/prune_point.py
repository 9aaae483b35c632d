"""Prune points: the feature tensors whose channels fine-pruning measures and removes.

The paper prunes the neurons of the last convolutional layer: the feature map the
classifier head reads. A prune point is therefore a *feature tensor* (see
fp_onnx/feature_maps.py): the output of a block (a Conv with its BN and
activation, a residual Add and the activation after it, a Concat, a SiLU), with
its channels on a known axis. Profiling records it (paper section 3: "average
activation of each neuron"), and surgery removes its channels from everything
that computes them and everything that reads them.

The default prune point is the last feature tensor (in topological order) that
is not a map of class scores: the output of the last residual block, the last
SiLU/HardSwish, the input of the global pooling or Flatten. A conv classifier such
as SqueezeNet's final 1x1 conv, whose output reaches a graph output through
pooling, reshaping and softmax only, is skipped.

Every point also says whether its channels can be physically removed (and by
which nodes), or why they can only be forced to zero; this is a surgery plan
(fp_onnx/surgery/plan.py) for a representative channel set (every other
channel), made without changing the graph.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace

import onnx
import onnx_graphsurgeon as gs

from fp_onnx.errors import BadModelError, BadOptionError
from fp_onnx.feature_maps import FeatureTensor, feature_tensors
from fp_onnx.graph import import_graph, is_graph_output, nodes_by_name, producer
from fp_onnx.surgery.context import GraphIndex
from fp_onnx.surgery.plan import describe_removal
from fp_onnx.vendor_names import layer_outputs, node_scopes, short_names

# Ops that carry weights: reaching one means the tensor is still a feature for a later layer.
_WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "LSTM", "GRU", "RNN"})


@dataclass(frozen=True)
class PrunePoint:
    """One feature tensor that can be pruned.

    tensor: the feature tensor (what profile records and surgery cuts).
    channels: its channel count; channel_axis: the axis holding them (1 for NCHW, the last axis
        for channels-last tensors); spatial: its other non-batch dims (ints, str for symbolic dims;
        empty when unknown).
    is_default: the prune point used when none is named.
    producer / op_type: the node that writes `tensor` and its op type.
    chain: the block's nodes, its first op (Conv, Add, Concat, ...) first, up to `producer`.
    names: the vendor's layer names that identify `tensor` (torch module paths such as `layer4.1`,
        Keras layer names such as `conv_3`); the most specific first.
    removable: True when the channels can be physically removed, False when they can only be forced
        to zero; mask_reason then says which node needs them and why.
    sources: the nodes that lose output channels (Conv, Gemm, MatMul) when the channels go;
    selections: the channel selections (Gather) inserted where a tensor other nodes also read
        (a residual's identity branch, a DenseNet feature) enters the pruned region.
    """

    tensor: str
    channels: int
    channel_axis: int
    spatial: tuple
    is_default: bool = False
    producer: str = ""
    op_type: str = ""
    chain: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    removable: bool = True
    sources: tuple[str, ...] = ()
    selections: tuple[str, ...] = ()
    mask_reason: str = ""

    @property
    def label(self) -> str:
        """A short name for messages and plot titles: the vendor's layer name, else the producing node."""
        return self.names[0] if self.names else (self.producer or self.tensor)

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("chain", "spatial", "names", "sources", "selections"):
            data[key] = list(data[key])
        data["label"] = self.label
        return data


def find_prune_points(model: onnx.ModelProto) -> list[PrunePoint]:
    """Every feature tensor of `model` as a prune point, in topological order; exactly one `is_default`.

    `model` must have inferred shapes and named nodes (fp_onnx.loading.load_model guarantees both).
    Raises BadModelError when the model has no channelled feature map.
    """
    graph, candidates = _candidates(model)
    index = GraphIndex.of(graph)
    return [_planned(graph, point, index) for point in candidates]


def resolve_prune_point(model: onnx.ModelProto, layer: str | None, *, model_name: str = "MODEL") -> PrunePoint:
    """The prune point named by `layer`; None gives the default.

    `layer` may be the feature tensor, any node or tensor of its chain, or a vendor layer name
    (`layer4.1`, `conv_3`) that identifies one prune point. `model_name` only appears in messages."""
    graph, points = _candidates(model)
    return _planned(graph, _named_point(model, points, layer, model_name))


def _named_point(model: onnx.ModelProto, points: list[PrunePoint], layer: str | None, model_name: str) -> PrunePoint:
    if layer is None:
        return next(p for p in points if p.is_default)
    for point in points:
        if layer in _graph_names(point, model):
            return point
    named = [p for p in points if layer in p.names]
    if len(named) == 1:
        return named[0]
    hint = f"run `fp-onnx layers {model_name}` to list candidates"
    if named:
        listed = ", ".join(f"'{p.tensor}'" for p in named[:5])
        raise BadOptionError(f"layer '{layer}' names {len(named)} prune points ({listed}); pass one of their "
                             f"tensors instead; {hint}")
    op_type = _op_type_of(model, layer)
    if op_type is None:
        raise BadOptionError(f"no layer named '{layer}' in model; {hint}")
    raise BadOptionError(f"layer '{layer}' is a {op_type}, not a conv feature map; {hint}")


# --------------------------------------------------------------------------- building points
def _candidates(model: onnx.ModelProto) -> tuple[gs.Graph, list[PrunePoint]]:
    """The graph and its prune points, not yet planned (removability comes from `_planned`)."""
    graph = import_graph(model)
    features = feature_tensors(graph)
    if not features:
        raise BadModelError(f"model '{graph.name}' has no convolutional feature map (no tensor with a known "
                            "channel axis and spatial dims); fine-pruning needs one to prune")
    names = _vendor_names(model, graph, features)
    default = _default_index(graph, features)
    return graph, [PrunePoint(
        tensor=f.tensor.name, channels=f.width, channel_axis=f.channels.axis, spatial=f.spatial(),
        is_default=i == default, producer=f.producer.name, op_type=f.producer.op,
        chain=tuple(n.name for n in f.chain), names=names.get(f.tensor.name, ())) for i, f in enumerate(features)]


def _planned(graph: gs.Graph, point: PrunePoint, index: GraphIndex | None = None) -> PrunePoint:
    """`point` with what surgery would do to it (planned for every other channel, graph unchanged)."""
    plan = describe_removal(graph, point.tensor, point.channel_axis, point.channels, range(0, point.channels, 2),
                            index)
    return replace(point, removable=plan.removes, sources=plan.sources, selections=plan.selections,
                   mask_reason=plan.reason)


def _default_index(graph: gs.Graph, features: list[FeatureTensor]) -> int:
    """The last feature tensor that is not a map of class scores; the last one if all of them are."""
    for i in range(len(features) - 1, -1, -1):
        if not _is_class_score_map(graph, features[i].tensor):
            return i
    return len(features) - 1


def _is_class_score_map(graph: gs.Graph, start: gs.Tensor) -> bool:
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


def _vendor_names(model: onnx.ModelProto, graph: gs.Graph,
                  features: list[FeatureTensor]) -> dict[str, tuple[str, ...]]:
    """Feature tensor -> the layer names that identify it (see `_ordered`)."""
    scopes = node_scopes(model)
    sizes: dict[str, int] = {}  # computing nodes per layer (not the Constant nodes of Clip bounds)
    for node in model.graph.node:
        if node.op_type not in ("Constant", "Identity"):
            for scope in scopes[node.name]:
                sizes[scope] = sizes.get(scope, 0) + 1
    owner = {t.name: (f.tensor.name, i) for f in features for i, node in enumerate(f.chain) for t in node.outputs}
    found: dict[str, list[tuple[str, int]]] = {}
    for scope, tensor in layer_outputs(graph, scopes).items():
        if tensor in owner:
            feature, position = owner[tensor]
            found.setdefault(feature, []).append((scope, position))
    return {tensor: _ordered(paths, sizes) for tensor, paths in found.items()}


def _ordered(paths: list[tuple[str, int]], sizes: dict[str, int]) -> tuple[str, ...]:
    """Layer names, the label first: the deepest layer of several nodes (a residual block rather than
    its last activation), else the deepest layer, ties to the layer whose output is the feature
    tensor itself (Keras' `conv5_block3_out` rather than `conv5_block3_add`); then the others from
    deepest to outermost. Each path is followed by its short name (tf2onnx)."""
    def key(entry: tuple[str, int]) -> tuple[int, int]:
        path, position = entry
        return -(path.count(".") + path.count("/")), -position

    ranked = [path for path, _ in sorted(set(paths), key=key)]
    blocks = [p for p in ranked if sizes.get(p, 0) > 1]
    first = blocks[:1] or ranked[:1]
    ordered: list[str] = []
    for path in first + [p for p in ranked if p not in first]:
        for name in short_names(path)[::-1]:
            if name not in ordered:
                ordered.append(name)
    return tuple(ordered)


# --------------------------------------------------------------------------- names
def _graph_names(point: PrunePoint, model: onnx.ModelProto) -> set[str]:
    names = {point.tensor, *point.chain}
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


__all__ = ["PrunePoint", "find_prune_points", "resolve_prune_point"]
