"""Let a graph exported with a fixed batch size of 1 run on whole batches.

Many vendor files (Caffe-era converters, `torch.onnx.export` without dynamic
axes) fix the batch dimension at 1. Running them one sample at a time is slow, so
for our own analysis runs we make the batch symbolic where the graph allows it:
the batch dims of inputs and outputs become `batch`, and Reshape shape constants
that hard-code the 1 become -1 (or the product of the other dims, when -1 is
already used). Whether that worked is then checked on real data by the runner
(batched result == sample-by-sample result); if it did not, the runner falls back
to one sample at a time.

This is never applied to the model we ship: the defended model keeps the vendor's
signature, fixed batch included.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fp_onnx.signature import real_inputs

BATCH_PARAM = "batch"


def has_fixed_batch_of_one(model: onnx.ModelProto) -> bool:
    """True when every real input has a leading dim fixed at 1."""
    inputs = real_inputs(model.graph)
    if not inputs:
        return False
    for value in inputs:
        dims = value.type.tensor_type.shape.dim
        if not dims or not dims[0].HasField("dim_value") or dims[0].dim_value != 1:
            return False
    return True


def make_batch_symbolic(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of `model` with a symbolic batch dim, or None when a Reshape cannot be rewritten."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = gs.import_onnx(inferred)
    for node in graph.nodes:
        if node.op == "Reshape" and not _rewrite_reshape(node):
            return None
    for tensor in [*graph.inputs, *graph.outputs]:
        if isinstance(tensor, gs.Variable) and tensor.shape:
            tensor.shape = [BATCH_PARAM, *tensor.shape[1:]]
    _forget_shapes(graph, keep={t.name for t in [*graph.inputs, *graph.outputs]})
    exported = gs.export_onnx(graph)
    del exported.opset_import[:]
    exported.opset_import.extend(model.opset_import)
    exported.ir_version = model.ir_version
    return onnx.shape_inference.infer_shapes(exported)


def _forget_shapes(graph: gs.Graph, keep: set[str]) -> None:
    """Drop the stale batch-1 shapes of intermediate tensors, in subgraphs (If/Loop bodies) too:
    shape inference recomputes them, and a stale `1` left inside a branch would be trusted."""
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor.name not in keep:
            tensor.shape = None
    for node in graph.nodes:
        for value in node.attrs.values():
            for subgraph in value if isinstance(value, list) else [value]:
                if isinstance(subgraph, gs.Graph):
                    _forget_shapes(subgraph, keep | {t.name for t in subgraph.inputs})


def _rewrite_reshape(node: gs.Node) -> bool:
    """Turn a constant target shape that hard-codes batch 1 into one that follows the batch."""
    data, shape = node.inputs[0], node.inputs[1]
    values = _constant_values(shape)
    if values is None:
        return True  # a computed shape follows the input batch by itself
    if values.size == 0 or values[0] != 1:
        return True
    new = values.copy()
    if -1 not in values[1:]:
        new[0] = -1
    else:
        if data.shape is None or not all(isinstance(d, int) for d in data.shape):
            return False
        known = int(np.prod([d for d in values[1:] if d not in (-1, 0)]))
        total = int(np.prod(data.shape[1:]))  # per-sample elements of the batch-1 input
        if known == 0 or total % known:
            return False
        new[list(values).index(-1, 1)] = total // known
        new[0] = -1
    node.inputs[1] = gs.Constant(f"{shape.name}_batch_symbolic_{node.name}", new.astype(values.dtype))
    return True


def _constant_values(tensor: gs.Tensor) -> np.ndarray | None:
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values).astype(np.int64).reshape(-1)
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is not None and producer.op == "Constant" and "value" in producer.attrs:
        return np.asarray(producer.attrs["value"].values).astype(np.int64).reshape(-1)
    return None
