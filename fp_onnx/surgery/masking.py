"""Forcing channels to zero with a constant mask: the reference for surgery, and its fallback.

`mask_channels` returns the original model with the chosen channels multiplied by
0 at the prune point's activation tensor. A physically pruned model must compute
exactly what this masked model computes (tests compare them with onnxruntime).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from fp_onnx.graph import import_graph, shape_of
from fp_onnx.prune_point import PrunePoint
from fp_onnx.surgery.context import Surgery
from fp_onnx.surgery.export import finalize
from fp_onnx.surgery.validate import check_point_in_graph, checked_channels


def mask_channels(model: onnx.ModelProto, point: PrunePoint, channels: Sequence[int]) -> onnx.ModelProto:
    """`model` with `channels` of `point.tensor` forced to zero by a Mul with a 0/1 constant mask
    along `point.channel_axis`. The masked tensor keeps the name `point.tensor`. Channel ids out of
    range are refused; masking every channel is allowed (it is only a reference)."""
    removed = checked_channels(point, channels, allow_all=True)
    s = Surgery(import_graph(model))
    check_point_in_graph(s.graph, point)
    insert_mask(s, point, removed)
    return finalize(s.graph, model)


def mask_points(model: onnx.ModelProto, channels: dict[PrunePoint, Sequence[int]]) -> onnx.ModelProto:
    """`model` with the given channels of several prune points forced to zero at once (the masked
    reference of a multi-layer pruning); points with no channels are left alone."""
    s = Surgery(import_graph(model))
    for point, ids in channels.items():
        if ids:
            check_point_in_graph(s.graph, point)
            insert_mask(s, point, checked_channels(point, ids, allow_all=True))
    return finalize(s.graph, model)


def insert_mask(s: Surgery, point: PrunePoint, channels: Sequence[int]) -> None:
    """Multiply `point.tensor` by a mask that is 0 on `channels`; every reader sees the masked tensor."""
    tensor = s.graph.tensors()[point.tensor]
    rank = len(shape_of(tensor) or ()) or len(point.spatial) + 2
    mask_shape = [1] * rank
    mask_shape[point.channel_axis] = point.channels
    mask = np.ones(point.channels, dtype=np.dtype(tensor.dtype or np.float32))
    mask[list(channels)] = 0
    # The Mul output takes over the original name, so graph outputs and the profiled tensor stay named.
    original_name = tensor.name
    tensor.name = s.unique_name(f"{original_name}__unmasked")
    masked = gs.Variable(original_name, dtype=tensor.dtype, shape=tensor.shape)
    readers = list(tensor.outputs)
    mul = gs.Node("Mul", s.unique_name(f"{original_name}__channel_mask"),
                  inputs=[tensor, gs.Constant(s.unique_name(f"{original_name}__mask"), mask.reshape(mask_shape))],
                  outputs=[masked])
    for reader in readers:
        for i in [i for i, t in enumerate(reader.inputs) if t is tensor]:
            reader.inputs[i] = masked
    s.graph.outputs = [masked if t is tensor else t for t in s.graph.outputs]
    s.graph.nodes.append(mul)
    s.log(mul, "masked", f"channels {list(channels)} of '{original_name}' multiplied by 0")
