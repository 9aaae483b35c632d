"""Read-only navigation of an onnx-graphsurgeon graph.

fp-onnx analyses and edits graphs as `onnx_graphsurgeon.Graph` objects (see
docs/architecture.md). These helpers answer the questions every graph step asks:
who produces or consumes a tensor, what constant a tensor holds (an initializer,
a `Constant` node, or either behind a chain of `Identity` nodes), and what shape
it has. None of them mutate the graph.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

Dim = int | str | None


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """A fresh graphsurgeon graph of `model`; editing it never touches `model`."""
    return gs.import_onnx(model)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that writes `tensor`, or None for graph inputs and initializers."""
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """The nodes that read `tensor`, in graph order of their edges."""
    return list(tensor.outputs)


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(out is tensor for out in graph.outputs)


def constant_source(tensor: gs.Tensor) -> gs.Tensor:
    """`tensor` with any chain of `Identity` nodes in front of it skipped.

    The TorchScript exporter deduplicates equal initializers and feeds the copies
    through `Identity` nodes, so a Conv's weight or a BatchNorm's scale can be the
    output of `Identity(initializer)`: it is that constant all the same."""
    node = producer(tensor)
    while node is not None and node.op == "Identity" and node.inputs:
        tensor = node.inputs[0]
        node = producer(tensor)
    return tensor


def constant_value(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of an initializer or of a `Constant` node's output, also behind `Identity`
    nodes (see `constant_source`); None for computed tensors."""
    if tensor is None:
        return None
    tensor = constant_source(tensor)
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is not None and node.op == "Constant":
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
        for key in ("value_float", "value_int"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
        for key in ("value_floats", "value_ints"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
    return None


def input_constant(node: gs.Node, index: int) -> np.ndarray | None:
    """The constant value of `node`'s input `index`, None if absent, empty or computed."""
    if index >= len(node.inputs) or not node.inputs[index].name:
        return None
    return constant_value(node.inputs[index])


def axes_of(node: gs.Node) -> list[int] | None:
    """A reduction's or Squeeze/Unsqueeze's `axes`: the attribute (older opsets) or constant input 1
    (ReduceSum 13+, the other reductions 18+, Squeeze/Unsqueeze 13+); None when computed or absent."""
    axes = node.attrs.get("axes")
    if axes is None:
        axes = input_constant(node, 1)
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


def shape_of(tensor: gs.Tensor) -> tuple[Dim, ...] | None:
    """The (inferred) shape: ints for static dims, str for symbolic ones, None when unknown."""
    if isinstance(tensor, gs.Constant):
        return tuple(int(d) for d in tensor.shape)
    if tensor.shape is None:
        return None
    return tuple(d if isinstance(d, (int, str)) or d is None else int(d) for d in tensor.shape)


def rank_of(tensor: gs.Tensor) -> int | None:
    shape = shape_of(tensor)
    return None if shape is None else len(shape)


def nodes_by_name(graph: gs.Graph) -> dict[str, gs.Node]:
    return {node.name: node for node in graph.nodes}


def conv_groups(node: gs.Node) -> int:
    return int(node.attrs.get("group", 1))


def data_inputs(node: gs.Node, tensor: gs.Tensor) -> list[int]:
    """The input indices at which `node` reads `tensor` (a tensor may feed a node twice)."""
    return [i for i, inp in enumerate(node.inputs) if inp is tensor]
