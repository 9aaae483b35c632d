"""Checking what a caller asks to prune: the prune point belongs to the model, the channel ids exist."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import onnx_graphsurgeon as gs

from fp_onnx.errors import BadOptionError
from fp_onnx.graph import shape_of

if TYPE_CHECKING:
    from fp_onnx.prune_point import PrunePoint


def checked_channels(point: PrunePoint, channels: Sequence[int], *, allow_all: bool) -> list[int]:
    """The sorted, de-duplicated channel ids; refuses ids outside [0, channels) and, unless
    `allow_all`, removing every channel (the layer would vanish and the model with it)."""
    ids = sorted({int(c) for c in channels})
    bad = [c for c in ids if not 0 <= c < point.channels]
    if bad:
        raise BadOptionError(f"channel ids {bad} are out of range for layer '{point.label}' with "
                             f"{point.channels} channels (valid ids: 0..{point.channels - 1})")
    if not allow_all and len(ids) == point.channels:
        raise BadOptionError(f"refusing to prune all {point.channels} channels of layer '{point.label}'; "
                             "keep at least one (lower the prune fraction)")
    return ids


def check_point_in_graph(graph: gs.Graph, point: PrunePoint) -> None:
    """Refuse a prune point found in another model (its tensor is missing here or has another width)."""
    tensor = graph.tensors().get(point.tensor)
    shape = shape_of(tensor) if tensor is not None else None
    width = shape[point.channel_axis] if shape is not None and len(shape) > point.channel_axis else None
    if tensor is None or not tensor.inputs or (isinstance(width, int) and width != point.channels):
        raise BadOptionError(f"prune point '{point.label}' (tensor '{point.tensor}') is not in this model; "
                             "list the prune points of this model with `fp-onnx layers MODEL`")
