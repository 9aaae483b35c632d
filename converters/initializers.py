"""Decide what each ONNX initializer becomes in the torch module.

* `parameter`: a float initializer feeding a weight, bias or scale slot of some
  node (as declared by that node's converter) -> trainable `nn.Parameter`.
* `buffer`: a float initializer feeding running state (BatchNormalization
  mean/var) -> persistent buffer, updated in train mode.
* `constant`: everything else (shape tensors, integer constants, scalar float
  constants such as epsilons or `x / 255`) -> non-persistent buffer, never
  trained and never written back.

The plan is a pure function of the model, so `write_back` can recompute it to
check that a module really came from `onnx_to_torch` for this model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from fp_onnx.converters.registry import OnnxNode, find_converter

PARAMETER, BUFFER, CONSTANT = "parameter", "buffer", "constant"

_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
}

# Attribute names of torch.nn.Module that a sanitized initializer name must not shadow.
_RESERVED = set(dir(torch.nn.Module)) | {"onnx_names", "input_names", "output_names", "op_modules"}


@dataclass(frozen=True)
class InitializerPlan:
    onnx_name: str
    torch_name: str
    role: str
    shape: tuple[int, ...]


def model_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset the model imports (ONNX's default domain is '' or 'ai.onnx')."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def plan_initializers(model: onnx.ModelProto) -> list[InitializerPlan]:
    """One plan per graph initializer, in graph order, with unique torch-safe names."""
    roles = _initializer_roles(model)
    used: set[str] = set()
    plans = []
    for init in model.graph.initializer:
        torch_name = _unique(sanitize(init.name), used)
        plans.append(InitializerPlan(init.name, torch_name, roles.get(init.name, CONSTANT), tuple(init.dims)))
    return plans


# Ops that only re-type or re-lay-out a weight on its way to the op that uses it
# (legacy exporters' Identity for shared weights, Cast of float16 storage,
# tf2onnx's Transpose/Reshape of kernels): the source initializer is what trains.
_PASS_THROUGH = {"Identity", "Cast", "Transpose", "Reshape", "Unsqueeze", "Squeeze", "Flatten"}


def _initializer_roles(model: onnx.ModelProto) -> dict[str, str]:
    opset = model_opset(model)
    initializers = {init.name: init for init in model.graph.initializer}
    producers = {name: node for node in model.graph.node for name in node.output}
    roles: dict[str, str] = {}
    for proto in model.graph.node:
        node = OnnxNode.from_proto(proto, opset)
        entry = find_converter(node, proto.domain)
        for slot, name in enumerate(node.inputs):
            init = initializers.get(_source(name, producers))
            if init is None or init.data_type not in _FLOAT_TYPES:
                continue
            if slot in entry.buffers:
                roles[init.name] = BUFFER
            elif slot in entry.params and _numel(init) >= entry.min_param_numel and roles.get(init.name) != BUFFER:
                roles[init.name] = PARAMETER
    return roles


def _source(name: str, producers: dict[str, onnx.NodeProto]) -> str:
    """The tensor `name` is computed from through pass-through ops (itself if none)."""
    while name in producers and producers[name].op_type in _PASS_THROUGH and producers[name].input:
        name = producers[name].input[0]
    return name


def sanitize(onnx_name: str) -> str:
    """A valid torch attribute name for an ONNX tensor name ('conv1.weight' -> 'conv1__weight')."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", onnx_name.replace(".", "__"))
    if not name or name[0].isdigit() or name in _RESERVED:
        name = f"t_{name}"
    return name


def _unique(name: str, used: set[str]) -> str:
    candidate, index = name, 1
    while candidate in used:
        index += 1
        candidate = f"{name}_{index}"
    used.add(candidate)
    return candidate


def _numel(init: onnx.TensorProto) -> int:
    return int(np.prod(init.dims)) if len(init.dims) else 1
