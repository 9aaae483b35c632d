"""Registry of ONNX -> PyTorch op converters, keyed by (op_type, opset range).

A converter is a small function that takes one ONNX node (`OnnxNode`: its
attributes, input/output names and the opset the model imports) and returns a
callable that computes the node's outputs from torch tensors. Semantics that
changed between opsets (axes as attribute vs input for Squeeze/Unsqueeze/
Reduce*/Split, Pad, Clip, Slice, Softmax, Resize, Dropout) are separate
converters registered with `since`/`until`.

Besides the function, a registration declares which input slots hold learned
weights (`params`: they become trainable `nn.Parameter`s when fed by a float
initializer) and which hold running state (`buffers`: BatchNormalization mean/var,
updated in train mode). `min_param_numel` lets element-wise ops (Add, Mul, ...)
train per-channel scales and biases while keeping scalar constants
(`x / 255`, epsilons) fixed. `static_inputs` are shape-like slots (Reshape's
shape, Slice's starts, Resize's scales, ...): when the graph feeds them from a
constant, the converter receives a Python list instead of a tensor, so
torch.export can re-trace the module without data-dependent shapes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import onnx

from fp_onnx.errors import UnsupportedOpError

#: What a converter returns: a callable mapping input tensors (None for an
#: omitted optional input) to one tensor or a tuple of tensors, one per output.
#: Callables that depend on train/eval mode are `torch.nn.Module`s.
OpFn = Callable[..., Any]

ONNX_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class OnnxNode:
    """The parts of an ONNX NodeProto a converter needs, with decoded attributes."""

    name: str
    op_type: str
    opset: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, proto: onnx.NodeProto, opset: int) -> "OnnxNode":
        attrs = {}
        for attribute in proto.attribute:
            value = onnx.helper.get_attribute_value(attribute)
            if isinstance(value, bytes):
                value = value.decode("utf-8")
            elif isinstance(value, list) and value and isinstance(value[0], bytes):
                value = [v.decode("utf-8") for v in value]
            attrs[attribute.name] = value
        return cls(proto.name, proto.op_type, opset, tuple(proto.input), tuple(proto.output), attrs)

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def describe(self) -> str:
        return f"node '{self.name}' ({self.op_type}, opset {self.opset})"


@dataclass(frozen=True)
class Converter:
    """One registered converter: the function and the roles of its input slots."""

    op_type: str
    since: int
    until: int | None
    build: Callable[[OnnxNode], OpFn]
    params: tuple[int, ...] = ()
    buffers: tuple[int, ...] = ()
    min_param_numel: int = 1
    static_inputs: tuple[int, ...] = ()

    def covers(self, opset: int) -> bool:
        return self.since <= opset and (self.until is None or opset <= self.until)


_REGISTRY: dict[str, list[Converter]] = {}


def converter(
    op_type: str,
    since: int = 1,
    until: int | None = None,
    *,
    params: tuple[int, ...] = (),
    buffers: tuple[int, ...] = (),
    min_param_numel: int = 1,
    static_inputs: tuple[int, ...] = (),
) -> Callable[[Callable[[OnnxNode], OpFn]], Callable[[OnnxNode], OpFn]]:
    """Register `build` as the converter of `op_type` for opsets since..until (inclusive)."""

    def register(build: Callable[[OnnxNode], OpFn]) -> Callable[[OnnxNode], OpFn]:
        entry = Converter(op_type, since, until, build, params, buffers, min_param_numel, static_inputs)
        for other in _REGISTRY.get(op_type, []):
            if entry.covers(other.since) or other.covers(since):
                raise ValueError(f"overlapping converters for {op_type}: opsets {since}.. and {other.since}..")
        _REGISTRY.setdefault(op_type, []).append(entry)
        return build

    return register


def supported_ops() -> list[str]:
    """Sorted op types that have at least one converter."""
    _load_ops()
    return sorted(_REGISTRY)


def find_converter(node: OnnxNode, domain: str = "") -> Converter:
    """The converter for `node` at its opset; raise UnsupportedOpError naming node, op and opset."""
    _load_ops()
    if domain in ONNX_DOMAINS:
        for entry in _REGISTRY.get(node.op_type, []):
            if entry.covers(node.opset):
                return entry
    shown_op = node.op_type if domain in ONNX_DOMAINS else f"{domain}::{node.op_type}"
    raise UnsupportedOpError(
        f"node '{node.name}' ({shown_op}, opset {node.opset}) has no PyTorch converter; "
        f"supported ops: {', '.join(supported_ops())}. Fine-tuning needs every op converted: "
        "simplify the model (e.g. onnxsim) or ask for a converter for this op."
    )


def _load_ops() -> None:
    # The op modules register themselves on import; importing lazily keeps this
    # module free of a circular import with fp_onnx.converters.ops.
    import fp_onnx.converters.ops  # noqa: F401
