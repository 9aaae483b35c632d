"""Turning an edited graph back into a checked model with the original's signature and metadata."""
from __future__ import annotations

import copy

import onnx
import onnx_graphsurgeon as gs
from onnx import helper

from fp_onnx.errors import BadModelError


def finalize(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """Clean up, sort, export and check `graph`, keeping `original`'s inputs and outputs (names,
    types, shapes incl. symbolic batch dims), opsets, IR version, producer and metadata.

    Stale intermediate shapes are dropped and re-inferred. Initializers that the original also
    listed as graph inputs (older converters) stay listed, with their new shapes."""
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    keep = {id(t) for t in [*graph.inputs, *graph.outputs]}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in keep:
            tensor.shape = None
    model = gs.export_onnx(graph)
    del model.graph.value_info[:]
    _restore_signature(model, original)
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, field, getattr(original, field))
    del model.opset_import[:]
    model.opset_import.extend(original.opset_import)
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        # The input passed the checker, so this is a surgery bug or an op surgery mishandled.
        raise BadModelError(f"pruned model of '{original.graph.name}' fails the ONNX checker: {error}") from error
    return model


def _restore_signature(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    initializers = {t.name: t for t in model.graph.initializer}
    original_inits = {t.name for t in original.graph.initializer}
    inputs = []
    for value in original.graph.input:
        if value.name not in original_inits:
            inputs.append(copy.deepcopy(value))
        elif value.name in initializers:
            init = initializers[value.name]
            inputs.append(helper.make_tensor_value_info(value.name, init.data_type, list(init.dims)))
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    del model.graph.output[:]
    model.graph.output.extend(copy.deepcopy(list(original.graph.output)))
