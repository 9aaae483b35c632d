"""Keras applications exported by tf2onnx (an optional extra: skipped unless the files exist).

Generate them with a separate TensorFlow environment (never a dependency of fp-onnx or its CI):
`python tests/keras_zoo/export_keras_zoo.py` (see that script). tf2onnx writes NHWC graphs with
layout Transposes, BatchNorm as Mul/Add, a Squeeze after the global pooling (ReduceMean) and a
MatMul + Softmax head; node names carry the Keras layer names.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fp_onnx.converters import onnx_to_torch
from fp_onnx.cost import count_flops, count_parameters
from fp_onnx.inference import ModelRunner
from fp_onnx.loading import load_model
from fp_onnx.prune_point import resolve_prune_point
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.surgery import mask_channels, prune_channels

FOLDER = Path(__file__).resolve().parent / "keras_zoo"
# The Keras layer whose output the classifier head reads (the input of GlobalAveragePooling2D).
FEATURE_LAYERS = {"keras_resnet50": "conv5_block3_out", "keras_mobilenet_v2": "out_relu"}
CPU = RuntimeOptions(device="cpu")


@pytest.fixture(scope="module", params=sorted(FEATURE_LAYERS))
def keras_model(request):
    path = FOLDER / f"{request.param}.onnx"
    if not path.exists():
        pytest.skip(f"{path.name} not generated (run tests/keras_zoo/export_keras_zoo.py with TensorFlow)")
    return request.param, load_model(path).model


def _run(model, x: np.ndarray) -> np.ndarray:
    return ModelRunner(model, options=CPU).run(x)[model.graph.output[0].name]


def test_default_point_is_the_keras_feature_layer(keras_model):
    name, model = keras_model
    point = resolve_prune_point(model, None)
    assert FEATURE_LAYERS[name] in point.names and point.label == FEATURE_LAYERS[name]
    assert resolve_prune_point(model, FEATURE_LAYERS[name]) == point
    assert point.removable, point.mask_reason


def test_half_pruned_equals_masked_reference_and_shrinks(keras_model):
    name, model = keras_model
    point = resolve_prune_point(model, None)
    channels = sorted(np.random.default_rng(0).choice(point.channels, point.channels // 2, replace=False).tolist())
    result = prune_channels(model, point, channels)
    assert result.physically_removed, result.mask_reason
    x = np.random.default_rng(1).random((3, 64, 64, 3), dtype=np.float32) * 255
    got, want = _run(result.model, x), _run(mask_channels(model, point, channels), x)
    assert np.abs(got - want).max() <= 1e-5 * max(np.abs(want).max(), 1e-12)
    assert count_parameters(result.model) < count_parameters(model)
    assert count_flops(result.model) < count_flops(model)


def test_converter_matches_onnxruntime(keras_model):
    import torch

    name, model = keras_model
    x = np.random.default_rng(2).random((2, 64, 64, 3), dtype=np.float32) * 255
    with torch.no_grad():
        got = onnx_to_torch(model).eval()(torch.from_numpy(x)).numpy()
    want = _run(model, x)
    assert np.abs(got - want).max() <= 1e-4 * max(np.abs(want).max(), 1e-12)
