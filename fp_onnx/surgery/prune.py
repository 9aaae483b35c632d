"""`prune_channels`: physically remove a prune point's channels, or force them to zero where the
graph needs them to keep existing."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx

from fp_onnx.graph import import_graph, shape_of
from fp_onnx.prune_point import PrunePoint
from fp_onnx.surgery.context import Blocked, Surgery
from fp_onnx.surgery.downstream import Flow, follow
from fp_onnx.surgery.export import finalize
from fp_onnx.surgery.masking import insert_mask
from fp_onnx.surgery.upstream import remove_upstream, zero_upstream
from fp_onnx.surgery.validate import check_point_in_graph, checked_channels


@dataclass
class SurgeryResult:
    """The pruned model and what happened to it.

    actions: one dict per touched node, {"node", "op_type", "action", "detail"}, where action is
    "removed" (weights deleted), "sliced" (per-channel constants deleted), "passed" (carries the
    channels on, nothing to delete), "masked" (channels forced to zero), "kept" (needs the
    channels; the reason why the point was masked), or "inserted" (a helper node was added).
    """

    model: onnx.ModelProto
    channels_removed: list[int]
    channels_kept: list[int]
    actions: list[dict]

    @property
    def physically_removed(self) -> bool:
        """True when the channels are gone from the graph, False when they were forced to zero."""
        return not any(a["action"] == "masked" for a in self.actions)


def prune_channels(model: onnx.ModelProto, point: PrunePoint, channels: Sequence[int]) -> SurgeryResult:
    """Remove `channels` of `point` from `model` (which is not modified).

    Upstream, the Conv loses those output channels and the chain loses their per-channel
    parameters; downstream, every reader loses the matching inputs (see surgery/downstream.py).
    Where a reader needs the channels to stay (a residual Add, a graph output, an op without a
    handler), nothing is removed: the channels are forced to exactly zero instead (zeroed conv
    weights and chain offsets, plus a constant mask when the chain maps 0 elsewhere), which
    computes the same as removing them. Refuses pruning every channel and ids out of range.
    """
    removed = checked_channels(point, channels, allow_all=False)
    kept = [c for c in range(point.channels) if c not in set(removed)]
    surgery = Surgery(import_graph(model))
    check_point_in_graph(surgery.graph, point)
    try:
        remove_upstream(surgery, point, removed)
        follow(surgery, Flow(surgery.graph.tensors()[point.tensor], point.channel_axis, tuple(removed),
                             point.channels, _rank(surgery, point)))
    except Blocked as blocked:
        surgery = Surgery(import_graph(model))
        if blocked.node is not None:
            surgery.log(blocked.node, "kept", blocked.reason)
        else:
            surgery.actions.append({"node": "", "op_type": "", "action": "kept", "detail": blocked.reason})
        if not zero_upstream(surgery, point, removed):
            insert_mask(surgery, point, removed)
    return SurgeryResult(finalize(surgery.graph, model), removed, kept, surgery.actions)


def _rank(s: Surgery, point: PrunePoint) -> int:
    return len(shape_of(s.graph.tensors()[point.tensor]) or ()) or len(point.spatial) + 2
