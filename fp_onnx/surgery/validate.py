"""Checking what a caller asks to prune: the prune point belongs to the model, the channel ids exist."""
from __future__ import annotations

from collections.abc import Sequence

import onnx_graphsurgeon as gs

from fp_onnx.errors import BadOptionError
from fp_onnx.prune_point import PrunePoint


def checked_channels(point: PrunePoint, channels: Sequence[int], *, allow_all: bool) -> list[int]:
    """The sorted, de-duplicated channel ids; refuses ids outside [0, channels) and, unless
    `allow_all`, removing every channel (the layer would vanish and the model with it)."""
    ids = sorted({int(c) for c in channels})
    bad = [c for c in ids if not 0 <= c < point.channels]
    if bad:
        raise BadOptionError(f"channel ids {bad} are out of range for layer '{point.conv}' with "
                             f"{point.channels} channels (valid ids: 0..{point.channels - 1})")
    if not allow_all and len(ids) == point.channels:
        raise BadOptionError(f"refusing to prune all {point.channels} channels of layer '{point.conv}'; "
                             "keep at least one (lower the prune fraction)")
    return ids


def check_point_in_graph(graph: gs.Graph, point: PrunePoint) -> None:
    """Refuse a prune point found in another model (its Conv or tensor is missing here)."""
    if not any(n.name == point.conv and n.op == "Conv" for n in graph.nodes) or point.tensor not in graph.tensors():
        raise BadOptionError(f"prune point '{point.conv}' (tensor '{point.tensor}') is not in this model; "
                             "list the prune points of this model with `fp-onnx layers MODEL`")
