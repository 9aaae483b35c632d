"""A model's serving signature: what an inference server sees of it.

The defended model must drop into the vendor's inference server, so its real inputs
and outputs (names, element types, shapes with symbolic dims) must equal the
vendor's. Older converters also list initializers as graph inputs; those are
weights, not part of the signature.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import helper

Dim = int | str | None
"""A dimension: a fixed size, a symbolic name, or None when unknown."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    elem_type: int
    shape: tuple[Dim, ...] | None

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))

    @property
    def batch_dim(self) -> Dim:
        return self.shape[0] if self.shape else None

    def describe(self) -> str:
        dims = "?" if self.shape is None else "x".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name} {self.dtype.name}[{dims}]"

    def to_dict(self) -> dict:
        data = asdict(self)
        data["dtype"] = self.dtype.name
        return data


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


def tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value.type.tensor_type
    shape = None
    if tensor_type.HasField("shape"):
        shape = tuple(_dim(d) for d in tensor_type.shape.dim)
    return TensorSpec(value.name, tensor_type.elem_type, shape)


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    if dim.HasField("dim_value"):
        return dim.dim_value
    if dim.HasField("dim_param"):
        return dim.dim_param
    return None


def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are fed at inference time (not initializers listed as inputs)."""
    weights = {tensor.name for tensor in graph.initializer}
    return [value for value in graph.input if value.name not in weights]


def signature_of(model: onnx.ModelProto) -> Signature:
    return Signature(
        inputs=tuple(tensor_spec(v) for v in real_inputs(model.graph)),
        outputs=tuple(tensor_spec(v) for v in model.graph.output),
    )


def class_count(model: onnx.ModelProto) -> int | None:
    """Classes the first output scores (its per-sample size, as `predictions` flattens it); None if unknown."""
    outputs = signature_of(model).outputs
    shape = outputs[0].shape if outputs else None
    if not shape or len(shape) < 2 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        return None
    return int(np.prod(shape[1:]))


def signature_differences(vendor: onnx.ModelProto, defended: onnx.ModelProto) -> list[str]:
    """Human-readable differences between two signatures; empty when they match."""
    before, after = signature_of(vendor), signature_of(defended)
    problems: list[str] = []
    for kind, old, new in (("input", before.inputs, after.inputs), ("output", before.outputs, after.outputs)):
        if [t.name for t in old] != [t.name for t in new]:
            problems.append(f"{kind} names {[t.name for t in old]} became {[t.name for t in new]}")
            continue
        for a, b in zip(old, new):
            if a != b:
                problems.append(f"{kind} {a.describe()} became {b.describe()}")
    return problems
