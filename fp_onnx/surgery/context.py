"""State shared by the surgery steps: the graph being edited and the action log.

`Surgery` wraps one freshly imported graphsurgeon graph. Steps edit it through
the helpers here so that a constant shared with another node is copied before it
changes (older exporters deduplicate identical initializers), every edit is
logged as an action, and a pattern physical removal cannot handle raises
`Blocked`, which makes `prune_channels` fall back to forcing the channels to zero.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_graphsurgeon as gs

from fp_onnx.graph import constant_value


class Blocked(Exception):
    """Physical removal is impossible here (the channels must keep existing); carries the reason."""

    def __init__(self, node: gs.Node | None, reason: str) -> None:
        super().__init__(reason)
        self.node, self.reason = node, reason


class Surgery:
    """One graph under edit, the names already used in it, and the per-node action log."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.actions: list[dict] = []
        self._names = set(graph.tensors()) | {n.name for n in graph.nodes}
        self._visited: set[str] = set()

    def unique_name(self, base: str) -> str:
        name, i = base, 0
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def log(self, node: gs.Node, action: str, detail: str) -> None:
        self.actions.append({"node": node.name, "op_type": node.op, "action": action, "detail": detail})

    def visit(self, node: gs.Node) -> None:
        """Mark `node` as reached downstream; a second arrival (a diamond) cannot be pruned consistently."""
        if node.name in self._visited:
            raise Blocked(node, f"{node.op} '{node.name}' is reached by the pruned channels on two paths")
        self._visited.add(node.name)

    # ----------------------------------------------------------------- constant inputs
    def param(self, node: gs.Node, index: int) -> np.ndarray:
        value = constant_value(node.inputs[index])
        if value is None:
            raise Blocked(node, f"input {index} of {node.op} '{node.name}' is computed, not a constant")
        return value

    def set_param(self, node: gs.Node, index: int, values: np.ndarray) -> None:
        """Give `node` input `index` the new constant `values`, copying it if other nodes share it."""
        tensor = node.inputs[index]
        owned = isinstance(tensor, gs.Constant) and all(user is node for user in tensor.outputs)
        if owned:
            tensor.values = np.ascontiguousarray(values)
        else:
            node.inputs[index] = gs.Constant(self.unique_name(f"{tensor.name}__{node.name}"),
                                             np.ascontiguousarray(values))

    def delete_channels(self, node: gs.Node, index: int, axis: int, channels: Iterable[int], width: int) -> None:
        """Delete `channels` (of `width`) along `axis` of the constant input `index` of `node`."""
        values = self.param(node, index)
        if values.shape[axis] != width:
            raise Blocked(node, f"input {index} of {node.op} '{node.name}' has {values.shape[axis]} entries on "
                                f"axis {axis}, expected {width}")
        self.set_param(node, index, np.delete(values, list(channels), axis=axis))

    def zero_channels(self, node: gs.Node, index: int, axis: int, channels: Iterable[int]) -> None:
        values = self.param(node, index).copy()
        index_expr = [slice(None)] * values.ndim
        index_expr[axis] = list(channels)
        values[tuple(index_expr)] = 0
        self.set_param(node, index, values)
