"""The vendor's own layer names, recovered from an exported graph.

Exporters keep the source framework's layer names in node names or metadata:

* torch's TorchScript exporter names nodes `/layer4/layer4.1/conv2/Conv`: each part
  is a module name, relative to the part before it unless it extends it
  (`features` then `features.17`), so the module paths are `layer4`, `layer4.1`,
  `layer4.1.conv2`;
* torch's dynamo exporter names nodes `node_Conv_12` but stores the module paths
  in the metadata entry `pkg.torch.onnx.name_scopes` (`['', 'layer4', 'layer4.1', ...]`);
* tf2onnx names nodes after the TensorFlow ops of a Keras layer, `model_1/conv_3/BiasAdd`:
  the Keras layer is `conv_3` (full path `model_1/conv_3`). Keras 3 models traced in a
  `tf.function` add a call suffix to the model's and every layer's scope
  (`resnet50_1/conv5_block3_out_1/Relu`), which is dropped when all of them have one.

A layer name identifies a tensor when the layer has exactly one output that other
layers read: `layer4.1` names the output of that residual block, `conv_3` the
output of that Keras layer.
"""
from __future__ import annotations

import ast
import re

import onnx
import onnx_graphsurgeon as gs

from fp_onnx.graph import constant_value

_DYNAMO_SCOPES = "pkg.torch.onnx.name_scopes"
_CALL_SUFFIX = re.compile(r"_\d+$")
_MAX_SCOPES_TEXT = 4096


def node_scopes(model: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
    """Node name -> the layer paths it belongs to, outermost first (empty when the name says nothing)."""
    tf_parts = {node.name: node.name.split("/")[:-1] for node in model.graph.node
                if "/" in node.name and not node.name.startswith("/") and not _dynamo_scopes(node)}
    # Keras 3 models traced in a tf.function name the model's and every layer's scope `<name>_1`
    # (`resnet50_1/conv5_block3_out_1/Relu`): when every model and layer part carries such a suffix,
    # strip it from those two parts, so `conv5_block3_out` names its layer.
    layer_parts = [part for parts in tf_parts.values() for part in parts[:2]]
    strip = bool(layer_parts) and all(_CALL_SUFFIX.search(part) for part in layer_parts)
    scopes = {}
    for node in model.graph.node:
        parts = tf_parts.get(node.name)
        if parts is None:
            scopes[node.name] = _scopes(node)
        else:
            if strip:
                parts = [_CALL_SUFFIX.sub("", part) for part in parts[:2]] + parts[2:]
            scopes[node.name] = tuple("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return scopes


def _dynamo_scopes(node: onnx.NodeProto) -> tuple[str, ...] | None:
    """The module paths in the dynamo exporter's metadata; None without it, () when it is unreadable.
    The metadata is vendor input: only a short Python list of strings literal is read."""
    for entry in node.metadata_props:
        if entry.key == _DYNAMO_SCOPES:
            if len(entry.value) > _MAX_SCOPES_TEXT or not entry.value.startswith("["):
                return ()
            try:
                names = ast.literal_eval(entry.value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                return ()
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                return ()
            # The last entry is the traced call (`conv2d_3`), not a module.
            return tuple(n for n in names[:-1] if n)
    return None


def _scopes(node: onnx.NodeProto) -> tuple[str, ...]:
    dynamo = _dynamo_scopes(node)
    if dynamo is not None:
        return dynamo
    return _torch_paths(node.name.split("/")[1:-1]) if node.name.startswith("/") else ()


def _torch_paths(parts: list[str]) -> tuple[str, ...]:
    """Module paths from TorchScript scope parts: a part that extends the previous one (`conv`,
    `conv.1`) is relative to the same parent; any other part is relative to the previous path."""
    paths: list[str] = []
    parent, previous = "", None
    for part in parts:
        if previous is None or not part.startswith(previous + "."):
            parent = paths[-1] if paths else ""
        paths.append(f"{parent}.{part}" if parent else part)
        previous = part
    return tuple(paths)


def layer_outputs(graph: gs.Graph, scopes: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Layer path -> the one computed tensor that the layer's nodes write and other layers read
    (layers with several such outputs are left out)."""
    outputs: dict[str, set[str]] = {}
    graph_outputs = {t.name for t in graph.outputs}
    for node in graph.nodes:
        inside = scopes.get(node.name, ())
        for tensor in node.outputs:
            if constant_value(tensor) is not None:
                continue
            for scope in inside:
                if tensor.name in graph_outputs or any(scope not in scopes.get(r.name, ()) for r in tensor.outputs):
                    outputs.setdefault(scope, set()).add(tensor.name)
    return {scope: next(iter(names)) for scope, names in outputs.items() if len(names) == 1}


def short_names(path: str) -> tuple[str, ...]:
    """The names a user may type for a layer path: the path, and for tf2onnx paths the Keras layer
    name (the last part; Keras layer names are unique within a model)."""
    return (path, path.rsplit("/", 1)[1]) if "/" in path else (path,)
