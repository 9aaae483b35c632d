"""Concat, Split, Slice, Gather, GatherND: selecting and joining parts of tensors."""
from __future__ import annotations

import math

import torch

from fp_onnx.converters.ops.common import ints, normalize_axes
from fp_onnx.converters.registry import converter


@converter("Concat")
def concat(node):
    axis = node.attr("axis")
    return lambda *tensors: torch.cat(tensors, dim=axis)


def _split(x, axis, sizes, outputs):
    if sizes is None:  # equal parts; with a remainder the last part is smaller (opset 18 num_outputs)
        sizes = math.ceil(x.shape[axis] / outputs)
    return tuple(torch.split(x, sizes, dim=axis))


@converter("Split", until=12)
def split_attribute(node):
    axis, sizes = node.attr("axis", 0), node.attr("split")
    outputs = len(node.outputs)

    def run(x, split=None):  # opset 1 could also pass the sizes as a second input
        chosen = list(sizes) if sizes is not None else ints(split)
        return _split(x, axis, chosen, outputs)

    return run


@converter("Split", since=13, static_inputs=(1,))
def split_input(node):
    axis = node.attr("axis", 0)
    outputs = node.attr("num_outputs", len(node.outputs))
    return lambda x, split=None: _split(x, axis, ints(split), outputs)


def _slice(x, starts, ends, axes, steps):
    axes = normalize_axes(axes if axes is not None else list(range(len(starts))), x.dim())
    steps = steps if steps is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        # Python's slice.indices clamps exactly as the ONNX Slice spec (incl. negative steps).
        begin, stop, stride = slice(start, end, step).indices(x.shape[axis])
        if stride > 0:
            x = x[(slice(None),) * axis + (slice(begin, stop, stride),)]
        else:
            index = torch.arange(begin, stop, stride, device=x.device)
            x = x.index_select(axis, index)
    return x


@converter("Slice", until=9)
def slice_attribute(node):
    starts, ends, axes = list(node.attr("starts")), list(node.attr("ends")), node.attr("axes")
    return lambda x: _slice(x, starts, ends, list(axes) if axes is not None else None, None)


@converter("Slice", since=10, static_inputs=(1, 2, 3, 4))
def slice_input(node):
    return lambda x, starts, ends, axes=None, steps=None: _slice(x, ints(starts), ints(ends), ints(axes), ints(steps))


@converter("Gather")
def gather(node):
    """out = x indexed along `axis` by `indices` (any rank; negative indices count from the end)."""
    axis = node.attr("axis", 0)

    def run(x, indices):
        dim = axis + x.dim() if axis < 0 else axis
        indices = torch.where(indices < 0, indices + x.shape[dim], indices).to(torch.int64)
        picked = x.index_select(dim, indices.reshape(-1))
        return picked.reshape(tuple(x.shape[:dim]) + tuple(indices.shape) + tuple(x.shape[dim + 1:]))

    return run


@converter("GatherND", since=11)
def gather_nd(node):
    """out[b..., i...] = data[b..., indices[b..., i..., :]] (ONNX GatherND; `batch_dims` since opset 12).

    The torch dynamo exporter emits it for adaptive pooling whose windows overlap. The k
    indexed dims are flattened into one, so each lookup is a single advanced index per batch;
    negative indices count from the end, as onnxruntime reads them.
    """
    batch_dims = node.attr("batch_dims", 0)

    def run(data, indices):
        k = indices.shape[-1]
        lookups = tuple(indices.shape[:-1])
        batch_shape, indexed = tuple(data.shape[:batch_dims]), tuple(data.shape[batch_dims : batch_dims + k])
        rest = tuple(data.shape[batch_dims + k :])
        batches = math.prod(batch_shape)
        bounds = torch.tensor(indexed, dtype=torch.int64, device=indices.device)
        indices = indices.to(torch.int64)
        indices = torch.where(indices < 0, indices + bounds, indices).reshape(batches, -1, k)
        strides = [math.prod(indexed[j + 1 :]) for j in range(k)]
        linear = sum(indices[..., j] * stride for j, stride in enumerate(strides))  # (batches, lookups)
        table = data.reshape(batches, math.prod(indexed), *rest)
        picked = table[torch.arange(batches, device=data.device)[:, None], linear]
        return picked.reshape(*lookups, *rest)

    return run
