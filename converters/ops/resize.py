"""Resize (opset 10+) and Upsample (opsets 7-9), computed per axis as ONNX specifies.

Each resized axis maps output index x to an input coordinate with the node's
coordinate_transformation_mode, then gathers: nearest (with nearest_mode),
linear (2 taps, coordinate clamped to the input) or cubic (4 taps, cubic_coeff_a,
exclude_outside). Doing it axis by axis is exact for ONNX's separable modes and
works for any rank. Coordinates are computed in float32, as onnxruntime does,
so nearest-neighbour ties round the same way.
"""
from __future__ import annotations

import numpy as np
import torch

from fp_onnx.converters.ops.common import floats, ints
from fp_onnx.converters.registry import converter
from fp_onnx.errors import UnsupportedOpError

_NEAREST = {
    "round_prefer_floor": lambda c: np.ceil(c - np.float32(0.5)),
    "round_prefer_ceil": lambda c: np.floor(c + np.float32(0.5)),
    "floor": np.floor,
    "ceil": np.ceil,
}


def _source_coordinates(mode, out, size, scale, roi_start, roi_end):
    """Input coordinate of every output index along one axis (ONNX Resize, coordinate_transformation_mode)."""
    x = np.arange(out, dtype=np.float32)
    scale = np.float32(scale)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out > 1 else np.zeros_like(x)
    if mode == "half_pixel_symmetric":
        adjustment = np.float32(out) / (scale * np.float32(size))
        offset = np.float32(size) / 2 * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "align_corners":
        return x * np.float32(size - 1) / np.float32(out - 1) if out > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    if mode == "tf_crop_and_resize":
        if out == 1:
            return np.full_like(x, 0.5 * (roi_start + roi_end) * (size - 1))
        step = np.float32((roi_end - roi_start) * (size - 1) / (out - 1))
        return np.float32(roi_start * (size - 1)) + x * step
    raise ValueError(mode)


def _cubic_weights(t, a):
    def kernel(d):
        d = np.abs(d)
        near = ((a + 2) * d - (a + 3)) * d * d + 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        return np.where(d <= 1, near, np.where(d < 2, far, 0.0))

    return [kernel(t + 1), kernel(t), kernel(1 - t), kernel(2 - t)]


def _resize_axis(x, axis, coords, settings):
    size = int(x.shape[axis])
    shape = [1] * x.dim()
    shape[axis] = len(coords)

    def take(index):
        return x.index_select(axis, torch.from_numpy(np.clip(index, 0, size - 1).astype(np.int64)).to(x.device))

    def weight(w):
        return torch.from_numpy(np.asarray(w, dtype=np.float32)).to(x.device, x.dtype).reshape(shape)

    mode = settings["mode"]
    if mode == "nearest":
        return take(settings["nearest"](coords))
    if mode == "linear":
        clamped = np.clip(coords, 0, size - 1)
        low = np.floor(clamped)
        fraction = clamped - low
        return take(low) * weight(1 - fraction) + take(low + 1) * weight(fraction)
    low = np.floor(coords)
    taps = [low - 1, low, low + 1, low + 2]
    weights = _cubic_weights(coords - low, settings["cubic_a"])
    if settings["exclude_outside"]:
        weights = [np.where((tap >= 0) & (tap < size), w, 0.0) for tap, w in zip(taps, weights)]
        total = sum(weights)
        weights = [w / total for w in weights]
    return sum(take(tap) * weight(w) for tap, w in zip(taps, weights))


# Modes that map output index x to input coordinate x when the scale is 1, so every
# interpolation mode (nearest, linear, cubic with its 0/1 weights at integers) copies.
_IDENTITY_AT_SCALE_ONE = {"half_pixel", "pytorch_half_pixel", "half_pixel_symmetric", "align_corners", "asymmetric"}


def resize(x, scales, sizes, roi, settings):
    """Resize x to `sizes` (or floor(shape * scales)); settings hold the node's attributes."""
    rank = x.dim()
    axes = settings.get("axes") or list(range(rank))
    axes = [a + rank if a < 0 else a for a in axes]
    out_of_range = []
    for i, axis in enumerate(axes):
        if not sizes and scales[i] == 1.0 and settings["coordinates"] in _IDENTITY_AT_SCALE_ONE:
            continue  # untouched axis; not reading its size keeps a re-traced batch axis symbolic
        size = int(x.shape[axis])
        if sizes:
            out, scale = sizes[i], sizes[i] / size
        else:
            scale = scales[i]
            out = int(np.floor(size * np.float32(scale)))
        roi_start, roi_end = (roi[i], roi[len(axes) + i]) if roi else (0.0, 1.0)
        coords = _source_coordinates(settings["coordinates"], out, size, scale, roi_start, roi_end)
        if settings["coordinates"] == "tf_crop_and_resize":
            out_of_range.append((axis, (coords < 0) | (coords > size - 1)))
        x = _resize_axis(x, axis, coords, settings)
    for axis, outside in out_of_range:
        shape = [1] * rank
        shape[axis] = len(outside)
        mask = torch.from_numpy(outside).to(x.device).reshape(shape)
        x = torch.where(mask, torch.tensor(settings["extrapolation"], dtype=x.dtype, device=x.device), x)
    return x


def _settings(node, coordinates, nearest):
    if node.attr("antialias", 0):
        raise UnsupportedOpError(f"{node.describe()}: antialiased Resize is not supported")
    if node.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise UnsupportedOpError(f"{node.describe()}: keep_aspect_ratio_policy other than 'stretch' is not supported")
    mode = node.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic", "bilinear", "trilinear"):
        raise UnsupportedOpError(f"{node.describe()} has unknown mode '{mode}'")
    return {
        "mode": "linear" if mode in ("bilinear", "trilinear") else mode,
        "coordinates": coordinates,
        "nearest": nearest,
        "cubic_a": node.attr("cubic_coeff_a", -0.75),
        "exclude_outside": bool(node.attr("exclude_outside", 0)),
        "extrapolation": node.attr("extrapolation_value", 0.0),
        "axes": node.attr("axes"),
    }


def _simple_nearest(coords):
    # Upsample and Resize-10: truncate when enlarging; onnxruntime rounds up when shrinking.
    shrinking = len(coords) > 1 and coords[1] - coords[0] > 1
    return np.ceil(coords) if shrinking else np.floor(coords)


@converter("Upsample", since=7, until=9, static_inputs=(1,))
def upsample(node):
    settings = _settings(node, "asymmetric", _simple_nearest)
    fixed = node.attr("scales")

    def run(x, scales=None):
        chosen = list(fixed) if fixed is not None else floats(scales)
        return resize(x, chosen, None, None, settings)

    return run


@converter("Resize", since=10, until=10, static_inputs=(1,))
def resize_10(node):
    settings = _settings(node, "asymmetric", _simple_nearest)
    return lambda x, scales: resize(x, floats(scales), None, None, settings)


@converter("Resize", since=11, static_inputs=(1, 2, 3))
def resize_11(node):
    nearest_mode = node.attr("nearest_mode", "round_prefer_floor")
    settings = _settings(node, node.attr("coordinate_transformation_mode", "half_pixel"), _NEAREST[nearest_mode])

    def run(x, roi=None, scales=None, sizes=None):
        return resize(x, floats(scales), ints(sizes) or None, floats(roi), settings)

    return run
