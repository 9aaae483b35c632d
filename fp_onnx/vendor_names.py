"""The vendor's own layer names, recovered from an exported graph.

Exporters keep the source framework's layer names in node names or metadata:

* torch's TorchScript exporter names nodes `/layer4/layer4.1/conv2/Conv`: each part
  is a module name, relative to the part before it unless it extends it
  (`features` then `features.17`), so the module paths are `layer4`, `layer4.1`,
  `layer4.1.conv2`;
* torch's dynamo exporter names nodes `node_Conv_12` but stores the module paths
  in the metadata entry `pkg.torch.onnx.name_scopes` (`['', 'layer4', 'layer4.1', ...]`);
* tf2onnx names nodes after the TensorFlow ops of a Keras layer, `model_1/conv_3/BiasAdd`:
  the Keras layer is `conv_3` (full path `model_1/conv_3`).

A layer name identifies a tensor when the layer has exactly one output that other
layers read: `layer4.1` names the output of that residual block, `conv_3` the
output of that Keras layer.
"""
from __future__ import annotations

import ast

import onnx
import onnx_graphsurgeon as gs

from fp_onnx.graph import constant_value

_DYNAMO_SCOPES = "pkg.torch.onnx.name_scopes"


def node_scopes(model: onnx.ModelProto) -> dict[str, tuple[str, ...]]:
    """Node name -> the layer paths it belongs to, outermost first (empty when the name says nothing)."""
    return {node.name: _scopes(node) for node in model.graph.node}


def _scopes(node: onnx.NodeProto) -> tuple[str, ...]:
    for entry in node.metadata_props:
        if entry.key == _DYNAMO_SCOPES:
            try:
                names = ast.literal_eval(entry.value)
            except (ValueError, SyntaxError):
                return ()
            # The last entry is the traced call (`conv2d_3`), not a module.
            return tuple(str(n) for n in names[:-1] if n)
    parts = node.name.split("/")
    if node.name.startswith("/"):
        return _torch_paths(parts[1:-1])
    return tuple("/".join(parts[:i]) for i in range(1, len(parts))) if len(parts) > 1 else ()


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
