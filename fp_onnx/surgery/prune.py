"""`prune_channels`: physically remove a prune point's channels, or force them to zero where the
graph needs them to keep existing."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import onnx

from fp_onnx.graph import import_graph
from fp_onnx.surgery.context import Action, Blocked, Surgery
from fp_onnx.surgery.export import finalize
from fp_onnx.surgery.masking import plan_mask
from fp_onnx.surgery.plan import plan_removal
from fp_onnx.surgery.validate import check_point_in_graph, checked_channels

if TYPE_CHECKING:
    from fp_onnx.prune_point import PrunePoint


@dataclass
class SurgeryResult:
    """The pruned model and what happened to it.

    actions: one dict per touched node, {"node", "op_type", "action", "detail"}, where action is an
    `Action`: "removed" (weights deleted), "sliced" (per-channel constants deleted), "passed"
    (carries the channels on, nothing to delete), "inserted" (a channel selection was added where a
    tensor that other nodes read enters the pruned region), "folded" (a pruned channel's constant
    moved into a bias), "masked" (channels forced to zero), or "kept" (this node needs the
    channels: the reason the point was masked).
    """

    model: onnx.ModelProto
    channels_removed: list[int]
    channels_kept: list[int]
    actions: list[dict]

    @property
    def physically_removed(self) -> bool:
        """True when the channels are gone from the graph, False when they were forced to zero."""
        return not any(a["action"] == Action.MASKED for a in self.actions)

    @property
    def mask_reason(self) -> str | None:
        """Why the channels were forced to zero (naming the node that needs them), None when removed."""
        return next((a["detail"] for a in self.actions if a["action"] == Action.KEPT), None)


def prune_channels(model: onnx.ModelProto, point: PrunePoint, channels: Sequence[int]) -> SurgeryResult:
    """Remove `channels` of `point` from `model` (which is not modified).

    The edit is planned first (fp_onnx/surgery/plan.py): upstream, every node that computes the
    channels loses them (Conv/Gemm/MatMul output channels, per-channel constants, both branches of
    a residual Add; a tensor that other nodes also read gets a channel selection instead);
    downstream, every reader loses the matching inputs. Where a reader needs the channels to stay
    (a residual Add after the point, LayerNormalization over the channels, a graph output, an op
    without a handler), nothing is removed: a constant 0/1 mask forces them to exactly zero, which
    computes the same, and the report names the node and the reason. Refuses pruning every channel
    and ids out of range.

    Example::

        point = resolve_prune_point(model, None)
        result = prune_channels(model, point, [3, 7])
        result.physically_removed, result.actions[0]
    """
    removed = checked_channels(point, channels, allow_all=False)
    kept = [c for c in range(point.channels) if c not in set(removed)]
    surgery = Surgery(import_graph(model))
    check_point_in_graph(surgery.graph, point)
    try:
        plan_removal(surgery, point.tensor, point.channel_axis, point.channels, removed)
    except Blocked as blocked:
        surgery = Surgery(import_graph(model))
        surgery.record(blocked.node, Action.KEPT, blocked.reason)
        plan_mask(surgery, point, removed)
    surgery.apply()
    return SurgeryResult(finalize(surgery.graph, model), removed, kept, surgery.steps)
