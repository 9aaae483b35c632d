"""Upstream surgery: remove the pruned channels from everything that computes them.

Starting at the prune point's tensor, the walk goes backwards through ops that
keep channels apart: channel-wise ops (fp_onnx/channel_ops.py: BN, activations,
per-channel affine constants, pooling, layout Transposes), depthwise convs, the
Sigmoid·Mul of SiLU, branch joins (a residual Add, a squeeze-excitation Mul: an
elementwise op over several computed tensors that line up channel by channel)
and channel Concats (whose inputs own consecutive channel ranges). Every tensor
it reaches is a *candidate*; a candidate joins the *region* when every node that
reads it carries its channels on into the region (a Conv that reads it as its
input does not), so removing its channels changes nothing outside the region.
The region is a fixed point, found in one pass in reverse topological order:
by the time a tensor is considered, every node that reads it has been decided.

At the region's sources a Conv (group 1, or whole groups of a grouped conv), a
Gemm or a MatMul by a constant loses output channels. A candidate that is read
outside the region (a residual's identity branch, a DenseNet feature that later
layers also read, a tensor made by an op no handler passes) keeps its channels
and its region readers get a channel selection (a Gather of the kept channels)
instead. So upstream never blocks: at worst the selection sits right at the
prune point. Each op type has one handler (`upstream` registers them).
"""
from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from fp_onnx.channel_ops import channel_rule
from fp_onnx.graph import conv_groups, constant_value, is_graph_output, shape_of
from fp_onnx.registry import register
from fp_onnx.surgery.context import Action, Blocked, Surgery
from fp_onnx.surgery.conv import (
    is_depthwise, output_width, plan_depthwise, plan_gather_kept_inputs, plan_remove_groups,
    plan_remove_outputs, plan_selection, whole_groups,
)

JOIN_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min"})
"""Elementwise ops that join branches: output channel c reads channel c of every aligned input."""


@dataclass(frozen=True)
class Mapping:
    """Channel j on `axis` of a rank-`rank` tensor is channel `offset + j` of the prune point."""

    axis: int
    offset: int
    width: int
    rank: int

    def local(self, removed: Sequence[int]) -> list[int]:
        return [c - self.offset for c in removed if self.offset <= c < self.offset + self.width]


@dataclass
class Passage:
    """How a node carries the channels upstream: the inputs the walk continues into (slot, mapping),
    and the edits to plan for the node itself once its output is in the region."""

    inputs: list[tuple[int, Mapping]]
    plan: Callable[[], None]


Handler = Callable[[Surgery, gs.Node, Mapping, list[int]], "Passage | None"]
_HANDLERS: dict[str, Handler] = {}


def upstream(*op_types: str, replace: bool = False) -> Callable[[Handler], Handler]:
    """Register `handler(surgery, node, output_mapping, removed_local) -> Passage | None` for `op_types`.

    None means the node cannot carry the removal further up: its output keeps every channel and
    gets a channel selection. Registering an op type twice raises ValueError unless `replace`."""

    def add(handler: Handler) -> Handler:
        return register(_HANDLERS, op_types, handler, replace=replace, what="an upstream handler")

    return add


@dataclass
class _Candidate:
    tensor: gs.Tensor
    mapping: Mapping | None  # None: reached with two different channel mappings
    readers: list[tuple[gs.Node, int, Mapping]] = field(default_factory=list)  # region readers: node, slot


def plan_upstream(s: Surgery, tensor: gs.Tensor, mapping: Mapping, removed: Sequence[int]) -> None:
    """Plan removing `removed` (prune-point channel ids) from the region that computes `tensor`."""
    candidates: dict[str, _Candidate] = {tensor.name: _Candidate(tensor, mapping)}
    edges: list[_Candidate] = []
    heap = [(-_producer_index(s, tensor), tensor.name)]
    while heap:
        _, name = heapq.heappop(heap)
        candidate = candidates[name]
        is_start = candidate.tensor is tensor
        if not is_start and not _joins_region(s, candidate):
            edges.append(candidate)
            continue
        node = candidate.tensor.inputs[0] if candidate.tensor.inputs else None
        local = candidate.mapping.local(removed)
        passage = _passage(s, node, candidate.mapping, local) if node is not None else None
        if passage is None:
            edges.append(candidate if not is_start else _Candidate(tensor, mapping, _all_readers(tensor, mapping)))
            continue
        passage.plan()
        for slot, input_mapping in passage.inputs:
            source = node.inputs[slot]
            known = candidates.get(source.name)
            if known is None:
                candidates[source.name] = known = _Candidate(source, input_mapping)
                heapq.heappush(heap, (-_producer_index(s, source), source.name))
            elif known.mapping != input_mapping:
                known.mapping = None
            known.readers.append((node, slot, input_mapping))
    for edge in edges:
        _plan_edge(s, edge, removed)


def _producer_index(s: Surgery, tensor: gs.Tensor) -> int:
    return s.position(tensor.inputs[0]) if tensor.inputs else -1


def _all_readers(tensor: gs.Tensor, mapping: Mapping) -> list[tuple[gs.Node, int, Mapping]]:
    return [(node, slot, mapping) for node in tensor.outputs for slot, t in enumerate(node.inputs) if t is tensor]


def _joins_region(s: Surgery, candidate: _Candidate) -> bool:
    """True when every read of the candidate carries its channels on into the region (a source such
    as a Conv reading it only as its input does not: it needs all of them)."""
    tensor = candidate.tensor
    region_reads = {(id(node), slot) for node, slot, _ in candidate.readers}
    every_read = {(id(node), slot) for node, slot, _ in _all_readers(tensor, candidate.mapping)}
    return (candidate.mapping is not None and bool(tensor.inputs) and not is_graph_output(s.graph, tensor)
            and every_read == region_reads)


def _plan_edge(s: Surgery, edge: _Candidate, removed: Sequence[int]) -> None:
    """The edge tensor keeps its channels; its region readers read a selection of the kept ones."""
    by_mapping: dict[Mapping, list[tuple[gs.Node, int]]] = {}
    for node, slot, mapping in edge.readers:
        by_mapping.setdefault(mapping, []).append((node, slot))
    for mapping, readers in by_mapping.items():
        local = set(mapping.local(removed))
        kept = [j for j in range(mapping.width) if j not in local]
        plan_selection(s, edge.tensor, readers, mapping.axis, kept, "the region reads it, other readers keep it")


def _passage(s: Surgery, node: gs.Node, mapping: Mapping, local: list[int]) -> Passage | None:
    if any(out.outputs or is_graph_output(s.graph, out) for out in node.outputs[1:]):
        return None  # a second output in use (BN in training mode, Dropout's mask): not channel-wise
    handler = _HANDLERS.get(node.op, _channel_wise)
    try:
        return handler(s, node, mapping, local)
    except Blocked:
        return None  # e.g. part of a group of a grouped conv: select the kept channels after it


def _computed_inputs(node: gs.Node) -> list[int]:
    return [i for i, t in enumerate(node.inputs) if t.name and constant_value(t) is None]


def _rank(tensor: gs.Tensor, fallback: int) -> int:
    shape = shape_of(tensor)
    return len(shape) if shape is not None else fallback


# --------------------------------------------------------------------------- handlers
def _channel_wise(s: Surgery, node: gs.Node, mapping: Mapping, local: list[int]) -> Passage | None:
    computed = _computed_inputs(node)
    if len(computed) != 1:
        return None
    slot = computed[0]
    rank = _rank(node.inputs[slot], mapping.rank)
    axis = mapping.axis
    if node.op == "Transpose":
        perm = list(node.attrs.get("perm", range(rank - 1, -1, -1)))
        axis = perm[mapping.axis] if len(perm) == rank else -1
    if rank != mapping.rank or axis < 0:
        return None
    rule = channel_rule(node, slot, axis, rank)
    if rule is None or rule.output_axis != mapping.axis:
        return None
    for index, param_axis in rule.params:
        if s.param_shape(node, index)[param_axis] != mapping.width:
            return None

    def plan() -> None:
        for index, param_axis in rule.params:
            s.delete_channels(node, index, param_axis, local, mapping.width)
        s.record(node, Action.SLICED if rule.params else Action.PASSED,
                 "per-channel constants removed" if rule.params else "channel-wise, nothing to remove")

    return Passage([(slot, Mapping(axis, mapping.offset, mapping.width, rank))], plan)


@upstream("Conv")
def _conv(s: Surgery, node: gs.Node, mapping: Mapping, local: list[int]) -> Passage | None:
    """A group-1 conv is a source; a depthwise conv passes the channels to its input; a grouped conv
    is a source when the removed channels are whole groups."""
    if mapping.axis != 1 or output_width(s, node) != mapping.width or constant_value(node.inputs[1]) is None:
        return None
    if conv_groups(node) == 1:
        return Passage([], lambda: plan_remove_outputs(s, node, local))
    if is_depthwise(s, node):
        return Passage([(0, Mapping(1, mapping.offset, mapping.width, mapping.rank))],
                       lambda: plan_depthwise(s, node, local))
    count = conv_groups(node)
    groups = whole_groups(local, mapping.width // count, "output", node)

    def plan() -> None:
        plan_remove_groups(s, node, groups)
        plan_gather_kept_inputs(s, node, groups, count)

    return Passage([], plan)


@upstream("Gemm")
def _gemm(s: Surgery, node: gs.Node, mapping: Mapping, local: list[int]) -> Passage | None:
    """Y = A B' + C: output feature j is row j of B (transB=1) or column j (transB=0), and C's entry j."""
    if mapping.axis != 1 or mapping.rank != 2 or constant_value(node.inputs[1]) is None:
        return None
    weight_axis = 0 if node.attrs.get("transB", 0) else 1
    bias = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if len(node.inputs) > 2 and node.inputs[2].name and bias is None:
        return None
    per_output_bias = bias is not None and bias.ndim >= 1 and bias.shape[-1] == mapping.width and bias.size > 1

    def plan() -> None:
        s.delete_channels(node, 1, weight_axis, local, mapping.width)
        if per_output_bias:
            s.delete_channels(node, 2, bias.ndim - 1, local, mapping.width)
        which = "rows" if weight_axis == 0 else "columns"
        s.record(node, Action.REMOVED, f"{len(local)} output features (weight {which})")

    return Passage([], plan)


@upstream("MatMul")
def _matmul(s: Surgery, node: gs.Node, mapping: Mapping, local: list[int]) -> Passage | None:
    """Y = A B with a constant 2-D B (a Linear over the last axis, e.g. channels-last blocks)."""
    weight = constant_value(node.inputs[1])
    if weight is None or weight.ndim != 2 or mapping.axis != mapping.rank - 1 or weight.shape[1] != mapping.width:
        return None

    def plan() -> None:
        s.delete_channels(node, 1, 1, local, mapping.width)
        s.record(node, Action.REMOVED, f"{len(local)} output features (weight columns)")

    return Passage([], plan)


@upstream("Concat")
def _concat(s: Surgery, node: gs.Node, mapping: Mapping, local: list[int]) -> Passage | None:
    """Input k owns the channels after the widths of inputs 0..k-1. Inputs that lose no channel are
    left alone; an input that loses all of them leaves the Concat."""
    axis = int(node.attrs.get("axis", 1)) % mapping.rank
    widths = [(shape_of(t) or (None,) * mapping.rank)[axis] for t in node.inputs]
    if axis != mapping.axis or not all(isinstance(w, int) for w in widths) or sum(widths) != mapping.width:
        return None
    lost = set(local)
    inputs, dropped, start = [], [], 0
    for slot, width in enumerate(widths):
        count = sum(start <= c < start + width for c in lost)
        if count == width:
            dropped.append(slot)
        elif count:
            inputs.append((slot, Mapping(axis, mapping.offset + start, width, mapping.rank)))
        start += width

    def plan() -> None:
        if dropped:
            doomed = [node.inputs[slot] for slot in dropped]
            s.edit(lambda: _drop_inputs(node, doomed))
        s.record(node, Action.PASSED, f"channels split over its inputs; {len(dropped)} input(s) removed whole"
                 if dropped else "channels split over its inputs")

    return Passage(inputs, plan)


def _drop_inputs(node: gs.Node, doomed: list[gs.Tensor]) -> None:
    for tensor in doomed:
        index = next(i for i, t in enumerate(node.inputs) if t is tensor)
        del node.inputs[index]


@upstream(*sorted(JOIN_OPS))
def _join(s: Surgery, node: gs.Node, mapping: Mapping, local: list[int]) -> Passage | None:
    """A branch join: every computed input that holds the channels (same size on the aligned axis)
    carries the removal further up; inputs broadcast over channels (size 1) are left alone."""
    computed = _computed_inputs(node)
    if len(computed) < 2:
        return _channel_wise(s, node, mapping, local)
    inputs = []
    for slot in computed:
        shape = shape_of(node.inputs[slot])
        if shape is None:
            return None
        axis = mapping.axis - (mapping.rank - len(shape))
        if axis < 0 or shape[axis] == 1:
            continue  # broadcast over the channels: every output channel reads the same values
        if shape[axis] != mapping.width:
            return None
        inputs.append((slot, Mapping(axis, mapping.offset, mapping.width, len(shape))))
    if not inputs or any(constant_value(t) is not None and t.name and _per_channel(t, mapping)
                         for t in node.inputs):
        return None  # a per-channel constant beside two computed inputs: not needed by any exporter we know
    return Passage(inputs, lambda: s.record(node, Action.PASSED, f"joins {len(inputs)} branches channel by channel"))


def _per_channel(tensor: gs.Tensor, mapping: Mapping) -> bool:
    shape = constant_value(tensor).shape
    axis = mapping.axis - (mapping.rank - len(shape))
    return axis >= 0 and shape[axis] != 1


def describe_sources(steps: Sequence[dict]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(nodes that lose output channels, channel selections inserted) of planned steps."""
    removed = tuple(step["node"] for step in steps if step["action"] == Action.REMOVED)
    selected = tuple(step["node"] for step in steps if step["action"] == Action.INSERTED)
    return removed, selected


__all__ = ["JOIN_OPS", "Mapping", "Passage", "describe_sources", "plan_upstream", "upstream"]
