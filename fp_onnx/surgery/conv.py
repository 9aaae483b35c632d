"""Removing channels from a Conv's weights, for dense and grouped convolutions.

ONNX Conv weights are (M, C/group, k...) and bias (M,); group g owns output
channels [g*M/group, (g+1)*M/group) and input channels [g*C/group, (g+1)*C/group)
(ONNX operator spec, Conv). A grouped conv can only lose whole groups, so that
every remaining group keeps the same size.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_graphsurgeon as gs

from fp_onnx.graph import conv_groups
from fp_onnx.surgery.context import Blocked, Surgery


def has_bias(conv: gs.Node) -> bool:
    return len(conv.inputs) > 2 and bool(conv.inputs[2].name)


def output_width(s: Surgery, conv: gs.Node) -> int:
    return int(s.param(conv, 1).shape[0])


def remove_output_channels(s: Surgery, conv: gs.Node, channels: Sequence[int]) -> None:
    """Delete weight rows and bias entries of `channels` from a group-1 conv."""
    width = output_width(s, conv)
    s.delete_channels(conv, 1, 0, channels, width)
    if has_bias(conv):
        s.delete_channels(conv, 2, 0, channels, width)
    s.log(conv, "removed", f"output channels {list(channels)} (weight rows{' and bias' if has_bias(conv) else ''})")


def zero_output_channels(s: Surgery, conv: gs.Node, channels: Sequence[int]) -> None:
    """Set weight rows and bias entries of `channels` to 0, so those outputs are exactly 0."""
    s.zero_channels(conv, 1, 0, channels)
    if has_bias(conv):
        s.zero_channels(conv, 2, 0, channels)
    s.log(conv, "masked", f"output channels {list(channels)} zeroed (weight rows and bias)")


def whole_groups(channels: Sequence[int], group_size: int, what: str, conv: gs.Node) -> list[int]:
    """The groups `channels` cover; Blocked when they cover a group only partly."""
    groups = sorted({c // group_size for c in channels})
    if sorted(channels) != [g * group_size + k for g in groups for k in range(group_size)]:
        raise Blocked(conv, f"grouped Conv '{conv.name}' would lose part of a group of {what} channels")
    return groups


def remove_groups(s: Surgery, conv: gs.Node, groups: Sequence[int]) -> tuple[list[int], int]:
    """Delete whole `groups` of a grouped conv; returns (removed output channels, original output width)."""
    width, count = output_width(s, conv), conv_groups(conv)
    per_group = width // count
    removed = [g * per_group + k for g in groups for k in range(per_group)]
    s.delete_channels(conv, 1, 0, removed, width)
    if has_bias(conv):
        s.delete_channels(conv, 2, 0, removed, width)
    conv.attrs["group"] = count - len(groups)
    s.log(conv, "removed", f"groups {list(groups)} of {count} (output channels {removed})")
    return removed, width


def gather_kept_inputs(s: Surgery, conv: gs.Node, groups: Sequence[int], count: int) -> None:
    """Feed a grouped conv that lost `groups` (of `count`) only the input channels its remaining groups
    read, through a Gather on axis 1 (its producer keeps all its channels)."""
    per_group = int(s.param(conv, 1).shape[1])
    kept = [g * per_group + k for g in range(count) if g not in set(groups) for k in range(per_group)]
    source = conv.inputs[0]
    indices = gs.Constant(s.unique_name(f"{conv.name}__kept_inputs"), np.asarray(kept, np.int64))
    gathered = gs.Variable(s.unique_name(f"{source.name}__kept"), dtype=source.dtype)
    gather = gs.Node("Gather", s.unique_name(f"{conv.name}__gather_inputs"), attrs={"axis": 1},
                     inputs=[source, indices], outputs=[gathered])
    s.graph.nodes.append(gather)
    conv.inputs[0] = gathered
    s.log(gather, "inserted", f"keeps the {len(kept)} input channels of the remaining groups of '{conv.name}'")
