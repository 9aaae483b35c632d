"""State shared by the surgery steps: the graph, the planned edits, and what each does.

Surgery is planned before anything changes (the way Torch-Pruning builds a
dependency group first): the upstream and downstream walks read the untouched
graph, check that every edit is possible, and record per node *what* will happen
(a step: node, op type, one of the `Action`s, a detail) and *how* (an edit, a
closure run later).
`Surgery.apply` then runs the edits in order. A pattern that physical removal
cannot handle raises `Blocked` while planning, before the graph has changed, and
`prune_channels` forces the channels to zero instead.

Constants are read through `fp_onnx.graph.constant_value`, so a weight behind the
TorchScript exporter's `Identity` deduplication counts as a constant, and every
edit of a constant that another node also reads gives the edited node its own copy.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

import numpy as np
import onnx_graphsurgeon as gs

from fp_onnx.graph import constant_source, constant_value


class Action(str, Enum):
    """What surgery does to one node (the `action` of a report entry)."""

    REMOVED = "removed"  # weights of the pruned channels deleted (output rows or input columns)
    SLICED = "sliced"  # per-channel constants (BN, affine, shape constants) deleted
    PASSED = "passed"  # carries the channels on, nothing to delete
    INSERTED = "inserted"  # a helper node added: a channel selection (Gather) at the region's edge
    FOLDED = "folded"  # the constant a pruned channel held folded into a bias
    MASKED = "masked"  # channels forced to zero (a constant 0/1 mask)
    KEPT = "kept"  # this node needs the channels: the reason the point is masked


class Blocked(Exception):
    """Physical removal is impossible here (the channels must keep existing); carries the reason."""

    def __init__(self, node: gs.Node | None, reason: str) -> None:
        super().__init__(reason)
        self.node, self.reason = node, reason


Edit = Callable[[], None]


@dataclass(frozen=True)
class GraphIndex:
    """Lookups over an unchanged graph that several plans can share (`fp-onnx layers` plans every
    candidate): node positions in a topological order, tensors by name, and the names in use."""

    positions: dict[int, int]
    tensors: dict[str, gs.Tensor]
    names: frozenset[str]

    @classmethod
    def of(cls, graph: gs.Graph) -> GraphIndex:
        tensors = graph.tensors()
        positions = {id(node): i for i, node in enumerate(graph.toposort().nodes)}
        return cls(positions, tensors, frozenset(tensors) | {node.name for node in graph.nodes})


class Surgery:
    """One graph under planning: the names in use, the recorded steps and the pending edits."""

    def __init__(self, graph: gs.Graph, index: GraphIndex | None = None) -> None:
        self.graph = graph
        self.index = index or GraphIndex.of(graph)
        self.steps: list[dict] = []
        self.edits: list[Edit] = []
        self._names = set(self.index.names)

    def unique_name(self, base: str) -> str:
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def position(self, node: gs.Node) -> int:
        """`node`'s index in a topological order of the graph (sorted once, before any edit)."""
        return self.index.positions.get(id(node), -1)

    def record(self, node: gs.Node | None, action: Action, detail: str) -> None:
        self.record_named("" if node is None else node.name, "" if node is None else node.op, action, detail)

    def record_named(self, name: str, op_type: str, action: Action, detail: str) -> None:
        """Record a step for a node by name (one that the plan will insert does not exist yet)."""
        self.steps.append({"node": name, "op_type": op_type, "action": action, "detail": detail})

    def edit(self, change: Edit) -> None:
        self.edits.append(change)

    def apply(self) -> None:
        """Run the planned edits in order (each at most once)."""
        edits, self.edits = self.edits, []
        for change in edits:
            change()

    # ----------------------------------------------------------------- constant inputs
    def param(self, node: gs.Node, index: int) -> np.ndarray:
        value = constant_value(node.inputs[index]) if index < len(node.inputs) else None
        if value is None:
            raise Blocked(node, f"input {index} of {node.op} '{node.name}' is computed, not a constant")
        return value

    def param_shape(self, node: gs.Node, index: int) -> tuple[int, ...]:
        """The shape of a constant input without loading its values (large weights load lazily)."""
        source = constant_source(node.inputs[index]) if index < len(node.inputs) else None
        if isinstance(source, gs.Constant):
            return tuple(int(d) for d in source.shape)
        return tuple(self.param(node, index).shape)

    def set_param(self, node: gs.Node, index: int, values: np.ndarray) -> None:
        """Give `node` input `index` the constant `values` now, copying it if other nodes share it
        (or if it reaches `node` through Identity nodes)."""
        tensor = node.inputs[index]
        owned = isinstance(tensor, gs.Constant) and all(user is node for user in tensor.outputs)
        if owned:
            tensor.values = np.ascontiguousarray(values)
        else:
            node.inputs[index] = gs.Constant(self.unique_name(f"{tensor.name}__{node.name}"),
                                             np.ascontiguousarray(values))

    def delete_channels(self, node: gs.Node, index: int, axis: int, channels: Iterable[int], width: int) -> None:
        """Plan deleting `channels` (of `width`) along `axis` of the constant input `index` of `node`."""
        shape = self.param_shape(node, index)
        if len(shape) <= axis or shape[axis] != width:
            raise Blocked(node, f"input {index} of {node.op} '{node.name}' has shape {list(shape)}, expected "
                                f"{width} entries on axis {axis}")
        channels = list(channels)
        self.edit(lambda: self.set_param(node, index, np.delete(self.param(node, index), channels, axis=axis)))

    def set_attr(self, node: gs.Node, name: str, value) -> None:
        self.edit(lambda: node.attrs.__setitem__(name, value))
