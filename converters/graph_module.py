"""`onnx_to_torch`: run an ONNX graph with torch ops, node by node, so it can be fine-tuned.

The module keeps the vendor's graph as is (no re-tracing, no fusion): every node
becomes one callable from the converter registry, executed in topological order.
Initializers become parameters, buffers or constants as planned in
`fp_onnx.converters.initializers`; `onnx_names` maps each torch name back to its
ONNX initializer, which is what `write_back` relies on.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from fp_onnx.converters.initializers import (
    BUFFER,
    CONSTANT,
    PARAMETER,
    InitializerPlan,
    model_opset,
    plan_initializers,
)
from fp_onnx.converters.ops.tensor import constant_array
from fp_onnx.converters.registry import OnnxNode, OpFn, find_converter
from fp_onnx.errors import BadModelError, FpOnnxError, ResourceLimitError, first_line
from fp_onnx.memory import is_out_of_memory


@dataclass(frozen=True)
class _Step:
    """One node to execute: its converter's callable and its constant shape-like inputs as Python values."""

    node: OnnxNode
    fn: OpFn
    static: dict[int, Any]


class OnnxGraphModule(torch.nn.Module):
    """An ONNX graph executed with torch ops.

    forward(*inputs) takes the graph's real inputs (graph inputs that are not
    initializers) as positional tensors in graph order and returns one tensor if
    the graph has one output, else a tuple in graph-output order.
    """

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        graph = model.graph
        _refuse_control_flow(graph)
        initializer_names = {init.name for init in graph.initializer}
        self.input_names = [value.name for value in graph.input if value.name not in initializer_names]
        self.output_names = [value.name for value in graph.output]
        self.onnx_names: dict[str, str] = {}  # torch name -> ONNX initializer, for parameters and buffers
        self._initializer_attrs: list[tuple[str, str]] = []
        plans = plan_initializers(model)
        self._register_initializers(model, plans)
        self.op_modules = torch.nn.ModuleList()  # mode-dependent ops (Dropout, BN) and Constant values
        self._tensor_hooks: dict[str, list] = {}
        constants = _constant_values(model, plans)
        self._steps = [self._build_step(proto, model, constants) for proto in _toposorted(graph)]

    def _build_step(self, proto: onnx.NodeProto, model: onnx.ModelProto, constants: dict[str, Any]) -> _Step:
        node = OnnxNode.from_proto(proto, model_opset(model))
        entry = find_converter(node, proto.domain)
        fn = entry.build(node)
        if isinstance(fn, torch.nn.Module):
            self.op_modules.append(fn)
        static = {slot: constants[node.inputs[slot]] for slot in entry.static_inputs
                  if slot < len(node.inputs) and node.inputs[slot] in constants}
        return _Step(node, fn, static)

    def _register_initializers(self, model: onnx.ModelProto, plans: list[InitializerPlan]) -> None:
        arrays = {init.name: init for init in model.graph.initializer}
        for plan in plans:
            tensor = torch.from_numpy(np.array(numpy_helper.to_array(arrays[plan.onnx_name]), copy=True))
            if plan.role == PARAMETER:
                self.register_parameter(plan.torch_name, torch.nn.Parameter(tensor))
            else:
                self.register_buffer(plan.torch_name, tensor, persistent=plan.role == BUFFER)
            if plan.role != CONSTANT:
                self.onnx_names[plan.torch_name] = plan.onnx_name
            self._initializer_attrs.append((plan.onnx_name, plan.torch_name))

    @property
    def computes_shapes(self) -> bool:
        """Whether the graph reads tensor shapes at run time (Shape/Size), e.g. `x.view(x.size(0), -1)` exports."""
        return any(step.node.op_type in ("Shape", "Size") for step in self._steps)

    def tensor_names(self) -> set[str]:
        """Every tensor a node computes (what `add_tensor_hook` accepts)."""
        return {name for step in self._steps for name in step.node.outputs if name}

    def outputs_of(self, op_type: str) -> list[str]:
        """The first output of every node of `op_type`, in execution order (e.g. every Conv's result, whose
        channel axis the ONNX spec fixes at 1, whatever the vendor's layout elsewhere)."""
        return [step.node.outputs[0] for step in self._steps if step.node.op_type == op_type and step.node.outputs]

    def add_tensor_hook(self, name: str, hook) -> "TensorHookHandle":
        """Call `hook(value) -> value` on tensor `name` right after the node computing it, so later nodes
        read what it returns. Criteria use this to put per-channel masks on prune points (the torch
        counterpart of the masked reference) and to read activations; `handle.remove()` undoes it."""
        if name not in self.tensor_names():
            raise KeyError(f"the graph computes no tensor named '{name}'")
        self._tensor_hooks.setdefault(name, []).append(hook)
        return TensorHookHandle(self._tensor_hooks, name, hook)

    def forward(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.input_names):
            raise TypeError(f"the graph takes {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        env: dict[str, torch.Tensor] = {name: getattr(self, attr) for name, attr in self._initializer_attrs}
        env.update(zip(self.input_names, inputs))
        hooks = self._tensor_hooks
        for step in self._steps:
            node = step.node
            args = [env[name] if name else None for name in node.inputs]
            for slot, value in step.static.items():
                args[slot] = value
            try:
                result = step.fn(*args)
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                if torch.compiler.is_compiling():
                    raise
                raise node_failure(node, exc) from None
            results = (result,) if len(node.outputs) == 1 else (
                result if isinstance(result, (tuple, list)) else (result,))
            for name, value in zip(node.outputs, results):
                if name:
                    for hook in hooks.get(name, ()):
                        value = hook(value)
                    env[name] = value
        outputs = tuple(env[name] for name in self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs


class TensorHookHandle:
    """Removes one hook added by `OnnxGraphModule.add_tensor_hook`."""

    def __init__(self, hooks: dict[str, list], name: str, hook) -> None:
        self._hooks, self._name, self._hook = hooks, name, hook

    def remove(self) -> None:
        registered = self._hooks.get(self._name, [])
        if self._hook in registered:
            registered.remove(self._hook)
        if not registered:
            self._hooks.pop(self._name, None)


def node_failure(node: OnnxNode, exc: Exception) -> FpOnnxError:
    """A torch op that fails on the vendor's weights or shapes (e.g. a conv bias that does not match its
    weight, which onnx's checks let through) is the model's fault; running out of memory is not."""
    if is_out_of_memory(exc):
        return ResourceLimitError(f"{node.describe()}: out of memory in PyTorch; lower --batch-size")
    return BadModelError(f"{node.describe()} fails in PyTorch: {first_line(exc)}")


def onnx_to_torch(model: onnx.ModelProto) -> OnnxGraphModule:
    """Convert a loaded ONNX model (checked, shape-inferred, uniquely named nodes) to a torch module.

    Raises UnsupportedOpError for the first node whose op (at the model's opset)
    has no converter, and BadModelError for graphs with control flow.
    """
    return OnnxGraphModule(model)


def _constant_values(model: onnx.ModelProto, plans: list[InitializerPlan]) -> dict[str, Any]:
    """Python values of tensors fixed at conversion time: constant initializers and Constant node outputs."""
    roles = {plan.onnx_name: plan.role for plan in plans}
    values = {init.name: numpy_helper.to_array(init).tolist() for init in model.graph.initializer
              if roles[init.name] == CONSTANT and _small(init.dims)}
    opset = model_opset(model)
    for proto in model.graph.node:
        if proto.op_type == "Constant" and proto.domain in ("", "ai.onnx"):
            array = constant_array(OnnxNode.from_proto(proto, opset))
            if array.size <= _STATIC_LIMIT:
                values[proto.output[0]] = array.tolist()
    return values


_STATIC_LIMIT = 64  # shape-like tensors are short; large constants stay tensors only


def _small(dims) -> bool:
    return int(np.prod(dims)) <= _STATIC_LIMIT if len(dims) else True


def _refuse_control_flow(graph: onnx.GraphProto) -> None:
    for proto in graph.node:
        if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in proto.attribute):
            raise BadModelError(
                f"node '{proto.name}' ({proto.op_type}) has a subgraph; control flow (If/Loop/Scan) "
                "cannot be converted for fine-tuning: export the model without data-dependent branches"
            )


def _toposorted(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes in an order where every input is produced before use (Kahn's algorithm, stable).

    ONNX requires graphs to be sorted already; this also accepts unsorted ones
    and refuses cycles or tensors that nothing defines.
    """
    defined = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output if name}
    waiting_on = [0] * len(graph.node)
    consumers: dict[int, list[int]] = {}
    for index, node in enumerate(graph.node):
        sources = {producer[name] for name in node.input if name not in defined and name in producer}
        undefined = [name for name in node.input if name not in defined and name not in producer]
        if undefined:
            raise BadModelError(f"node '{node.name}' reads tensors nothing defines: {undefined[:5]}")
        waiting_on[index] = len(sources)
        for source in sources:
            consumers.setdefault(source, []).append(index)
    ready = [index for index, count in enumerate(waiting_on) if count == 0]
    ordered: list[onnx.NodeProto] = []
    while ready:
        index = heapq.heappop(ready)
        ordered.append(graph.node[index])
        for consumer in consumers.get(index, []):
            waiting_on[consumer] -= 1
            if waiting_on[consumer] == 0:
                heapq.heappush(ready, consumer)
    if len(ordered) != len(graph.node):
        raise BadModelError("the graph has a cycle; ONNX graphs must be acyclic")
    return ordered
