"""Upstream surgery: the producing Conv and its channel-wise chain up to the prune point's tensor."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import onnx_graphsurgeon as gs

from fp_onnx.channel_ops import ChannelRule, channel_rule
from fp_onnx.graph import conv_groups, data_inputs, shape_of
from fp_onnx.prune_point import PrunePoint
from fp_onnx.surgery.context import Blocked, Surgery
from fp_onnx.surgery.conv import (
    gather_kept_inputs, output_width, remove_groups, remove_output_channels, whole_groups, zero_output_channels,
)


def producing_conv(s: Surgery, point: PrunePoint) -> gs.Node:
    conv = next((n for n in s.graph.nodes if n.name == point.conv and n.op == "Conv"), None)
    if conv is None:
        raise Blocked(None, f"Conv '{point.conv}' is not in this model")
    return conv


def remove_upstream(s: Surgery, point: PrunePoint, channels: Sequence[int]) -> None:
    """Delete `channels` from the Conv (weight rows, bias; whole groups of a grouped conv, whose
    inputs then go through a Gather) and from every per-channel parameter of the chain."""
    conv = producing_conv(s, point)
    count = conv_groups(conv)
    if count == 1:
        remove_output_channels(s, conv, channels)
    else:
        groups = whole_groups(channels, output_width(s, conv) // count, "output", conv)
        remove_groups(s, conv, groups)
        gather_kept_inputs(s, conv, groups, count)
    for node, rule in chain_rules(s, point):
        for index, axis in rule.params:
            s.delete_channels(node, index, axis, channels, point.channels)
        s.log(node, "sliced" if rule.params else "passed", _params_detail(rule, "removed"))


def zero_upstream(s: Surgery, point: PrunePoint, channels: Sequence[int]) -> bool:
    """Force `channels` to exactly 0 at the prune point by zeroing the Conv's weights and the chain's
    offsets (BN scale and B, per-channel Add constants). Returns False when some chain op maps 0 to
    a non-zero value (Sigmoid, a Clip above 0, ...), so a mask is still needed."""
    zero_output_channels(s, producing_conv(s, point), channels)
    exact = True
    for node, rule in chain_rules(s, point):
        if rule.zero_params is None:
            exact = False
            s.log(node, "kept", "maps 0 to a non-zero value; channels masked after the chain")
            continue
        axes = dict(rule.params)
        for index in rule.zero_params:
            s.zero_channels(node, index, axes[index], channels)
        s.log(node, "masked" if rule.zero_params else "passed", f"zeroed inputs {list(rule.zero_params)}"
              if rule.zero_params else "keeps a zero channel at zero")
    return exact


def chain_rules(s: Surgery, point: PrunePoint) -> Iterator[tuple[gs.Node, ChannelRule]]:
    """Each chain node with its channel rule, re-derived on the graph under edit."""
    nodes = {n.name: n for n in s.graph.nodes}
    tensor = producing_conv(s, point).outputs[0]
    axis, rank = 1, len(shape_of(tensor) or ()) or len(point.spatial) + 2
    for name in point.chain:
        node = nodes[name]
        rule = channel_rule(node, data_inputs(node, tensor)[0], axis, rank)
        if rule is None:
            raise Blocked(node, f"{node.op} '{name}' in the chain of '{point.conv}' is not channel-wise")
        yield node, rule
        tensor, axis = node.outputs[0], rule.output_axis


def _params_detail(rule: ChannelRule, verb: str) -> str:
    if not rule.params:
        return "channel-wise, no per-channel parameters"
    return f"per-channel parameters at inputs {[i for i, _ in rule.params]} {verb}"
