"""The surgery plan: what removing channels at a prune point will touch, or why it cannot.

`plan_removal` walks upstream (surgery/upstream.py: the region that computes the
prune point's tensor) and downstream (surgery/downstream.py: every reader) on a
graph it does not change, recording per node what will happen and queueing the
edits; `Surgery.apply` carries them out. `describe_removal` is the read-only
summary that `fp-onnx layers` shows per candidate.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from fp_onnx.graph import shape_of
from fp_onnx.surgery.context import Action, Blocked, GraphIndex, Surgery
from fp_onnx.surgery.downstream import Flow, plan_downstream
from fp_onnx.surgery.upstream import Mapping, plan_upstream


@dataclass(frozen=True)
class RemovalPlan:
    """Whether the channels of a tensor can be physically removed, and how.

    removes: True when every reader can lose the channels; False when they must be forced to zero.
    sources: nodes that lose output channels (Conv, Gemm, MatMul).
    selections: Gather nodes to be inserted where a tensor that other nodes also read enters the region.
    reason: why the channels must stay ("" when `removes`), naming the node that needs them.
    steps: the planned per-node actions ({"node", "op_type", "action", "detail"}).
    """

    removes: bool
    sources: tuple[str, ...]
    selections: tuple[str, ...]
    reason: str
    steps: tuple[dict, ...]


def plan_removal(s: Surgery, tensor_name: str, axis: int, width: int, removed: Sequence[int]) -> int:
    """Plan removing channels `removed` (of `width`, on `axis`) of tensor `tensor_name` on `s`;
    raises Blocked (nothing applied) when some reader needs them. Returns how many of the recorded
    steps are upstream (the region that computes the tensor)."""
    tensor = s.index.tensors[tensor_name]
    shape = shape_of(tensor)
    rank = len(shape) if shape is not None else axis + 1
    plan_upstream(s, tensor, Mapping(axis, 0, width, rank), removed)
    upstream_steps = len(s.steps)
    plan_downstream(s, Flow(tensor, axis, tuple(removed), width, rank))
    return upstream_steps


def describe_removal(graph: gs.Graph, tensor_name: str, axis: int, width: int, removed: Sequence[int],
                     index: GraphIndex | None = None) -> RemovalPlan:
    """Plan (never apply) removing `removed` from `tensor_name` on `graph`, which stays as it is;
    `index` shares the graph's lookups between several plans."""
    s = Surgery(graph, index)
    try:
        upstream_steps = plan_removal(s, tensor_name, axis, width, removed)
    except Blocked as blocked:
        return RemovalPlan(False, (), (), blocked.reason, tuple(s.steps))
    upstream = s.steps[:upstream_steps]
    sources = tuple(step["node"] for step in upstream if step["action"] == Action.REMOVED)
    selections = tuple(step["node"] for step in upstream if step["action"] == Action.INSERTED)
    return RemovalPlan(True, sources, selections, "", tuple(s.steps))
