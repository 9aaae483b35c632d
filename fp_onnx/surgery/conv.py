"""Planning channel removal in a Conv's weights, for dense, grouped and depthwise convolutions,
and the channel selection (Gather) that keeps only some channels of a tensor.

ONNX Conv weights are (M, C/group, k...) and bias (M,); group g owns output
channels [g*M/group, (g+1)*M/group) and input channels [g*C/group, (g+1)*C/group)
(ONNX operator spec, Conv). A grouped conv can only lose whole groups, so that
every remaining group keeps the same size; a depthwise conv (one input and one
output channel per group) can lose any channel.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from fp_onnx.graph import conv_groups
from fp_onnx.surgery.context import Action, Blocked, Surgery


def has_bias(conv: gs.Node) -> bool:
    return len(conv.inputs) > 2 and bool(conv.inputs[2].name)


def output_width(s: Surgery, conv: gs.Node) -> int:
    return int(s.param_shape(conv, 1)[0])


def is_depthwise(s: Surgery, conv: gs.Node) -> bool:
    """One input and one output channel per group: channel c of the output reads only channel c."""
    shape = s.param_shape(conv, 1)
    return conv_groups(conv) > 1 and shape[1] == 1 and shape[0] == conv_groups(conv)


def plan_remove_outputs(s: Surgery, conv: gs.Node, channels: Sequence[int]) -> None:
    """Delete weight rows and bias entries of `channels` from a group-1 conv."""
    width = output_width(s, conv)
    s.delete_channels(conv, 1, 0, channels, width)
    if has_bias(conv):
        s.delete_channels(conv, 2, 0, channels, width)
    s.record(conv, Action.REMOVED, f"{len(channels)} output channels (weight rows"
                                   f"{' and bias' if has_bias(conv) else ''})")


def plan_depthwise(s: Surgery, conv: gs.Node, channels: Sequence[int]) -> None:
    """A depthwise conv loses the groups of `channels`: weight rows, bias entries and the group count."""
    width = output_width(s, conv)
    s.delete_channels(conv, 1, 0, channels, width)
    if has_bias(conv):
        s.delete_channels(conv, 2, 0, channels, width)
    s.set_attr(conv, "group", width - len(channels))
    s.record(conv, Action.SLICED, f"depthwise: {len(channels)} of {width} groups removed")


def whole_groups(channels: Sequence[int], group_size: int, what: str, conv: gs.Node) -> list[int]:
    """The groups `channels` cover; Blocked when they cover a group only partly."""
    groups = sorted({c // group_size for c in channels})
    if sorted(channels) != [g * group_size + k for g in groups for k in range(group_size)]:
        raise Blocked(conv, f"grouped Conv '{conv.name}' would lose part of a group of {what} channels")
    return groups


def plan_remove_groups(s: Surgery, conv: gs.Node, groups: Sequence[int]) -> tuple[list[int], int]:
    """Delete whole `groups` of a grouped conv; returns (removed output channels, original output width)."""
    width, count = output_width(s, conv), conv_groups(conv)
    per_group = width // count
    removed = [g * per_group + k for g in groups for k in range(per_group)]
    s.delete_channels(conv, 1, 0, removed, width)
    if has_bias(conv):
        s.delete_channels(conv, 2, 0, removed, width)
    s.set_attr(conv, "group", count - len(groups))
    s.record(conv, Action.REMOVED, f"groups {list(groups)} of {count} ({len(removed)} output channels)")
    return removed, width


def plan_gather_kept_inputs(s: Surgery, conv: gs.Node, groups: Sequence[int], count: int) -> None:
    """Feed a grouped conv that loses `groups` (of `count`) only the input channels its remaining
    groups read (its producer keeps all its channels)."""
    per_group = int(s.param_shape(conv, 1)[1])
    lost = set(groups)
    kept = [g * per_group + k for g in range(count) if g not in lost for k in range(per_group)]
    plan_selection(s, conv.inputs[0], [(conv, 0)], 1, kept, f"input channels of the remaining groups of '{conv.name}'")


def plan_selection(s: Surgery, tensor: gs.Tensor, readers: Sequence[tuple[gs.Node, int]], axis: int,
                   kept: Sequence[int], why: str) -> None:
    """Plan a Gather of the `kept` channels (along `axis`) of `tensor`, read by `readers` ((node, input
    slot) pairs) instead of `tensor`; other readers of `tensor` keep every channel."""
    name = s.unique_name(f"{tensor.name}__kept")
    node_name = s.unique_name(f"{tensor.name}__select")
    indices_name = s.unique_name(f"{tensor.name}__kept_indices")
    indices = np.asarray(list(kept), np.int64)

    def insert() -> None:
        selected = gs.Variable(name, dtype=tensor.dtype)
        gather = gs.Node("Gather", node_name, attrs={"axis": axis},
                         inputs=[tensor, gs.Constant(indices_name, indices)], outputs=[selected])
        s.graph.nodes.append(gather)
        for reader, slot in readers:
            if slot >= len(reader.inputs) or reader.inputs[slot] is not tensor:  # an earlier edit dropped inputs
                slot = next(i for i, t in enumerate(reader.inputs) if t is tensor)
            reader.inputs[slot] = selected

    s.edit(insert)
    s.record_named(node_name, "Gather", Action.INSERTED,
                   f"keeps {len(kept)} channels of '{tensor.name}' on axis {axis}: {why}")
