"""Graph surgery on every zoo model: the pruned model must compute exactly what the zero-masked
original computes, pass the checker, keep its signature, and shrink where channels were removed."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fp_onnx.cost import count_flops, count_parameters
from fp_onnx.errors import BadOptionError
from fp_onnx.prune_point import find_prune_points, resolve_prune_point
from fp_onnx.surgery import mask_channels, prune_channels
from model_zoo import random_input, zoo_cases

# An inner prune point per model (index in find_prune_points), chosen to exercise a distinct pattern.
INNER = {
    "alexnet": 2,  # conv3 -> conv4
    "deepid": 2,  # conv3 (the paper's point): pooled output read by Flatten->Gemm AND conv4
    "resnet18": 1,  # first block's conv1 -> ReLU -> conv2
    "mobilenetv2": 4,  # expand conv -> Clip -> depthwise conv (loses groups, BN-folded bias) -> project conv
    "densenet": 3,  # dense-layer conv -> Concat -> BN -> ReLU -> conv and the next Concat
    "squeezenet": 1,  # Fire squeeze conv -> both expand convs
    "convbn": 0,  # Conv -> BN -> ReLU -> MaxPool (unfused BN sliced)
    "keras_nhwc": 0,  # NCHW conv inside the NHWC graph
    "caffe": 0,  # Relu -> Pad -> MaxPool chain
}
# Block outputs whose upstream is a join: (model, exporter, point index, what it exercises).
BLOCKS = [
    ("resnet18", "legacy", 6, "residual Add -> ReLU read by a downsampling block: conv branch + identity selection"),
    ("resnet18", "dynamo", 6, "the same, dynamo export"),
    ("mobilenetv2", "legacy", 10, "inverted-residual Add (no activation) read by the next expand conv"),
    ("densenet", "legacy", 4, "dense Concat whose first input other layers also read"),
    ("squeezenet", "legacy", 4, "Fire Concat of two expand convs, both lose output channels"),
]
# Prune points that must keep their channels (forced to zero instead of removed).
MASKED: set[tuple[str, str]] = set()
FRACTIONS = (0.1, 0.5, 0.9)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def pick_channels(channels: int, fraction: float, seed: int) -> list[int]:
    count = min(channels - 1, max(1, round(fraction * channels)))
    return sorted(np.random.default_rng(seed).choice(channels, count, replace=False).tolist())


def signature(model: onnx.ModelProto) -> list[tuple]:
    inits = {t.name for t in model.graph.initializer}

    def describe(value: onnx.ValueInfoProto) -> tuple:
        tensor = value.type.tensor_type
        return value.name, tensor.elem_type, tuple(d.dim_value or d.dim_param for d in tensor.shape.dim)

    return [describe(v) for v in model.graph.input if v.name not in inits] + [describe(v) for v in model.graph.output]


def point_for(model: onnx.ModelProto, name: str, where: str):
    return resolve_prune_point(model, None) if where == "default" else find_prune_points(model)[INNER[name]]


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("where", ["default", "inner"])
@pytest.mark.parametrize("name,exporter", zoo_cases())
def test_pruned_model_equals_masked_reference(zoo_model, name, exporter, where, fraction):
    model = zoo_model(name, exporter)
    point = point_for(model, name, where)
    channels = pick_channels(point.channels, fraction, seed=len(name))
    result = prune_channels(model, point, channels)

    assert result.channels_removed == channels
    assert result.channels_kept == [c for c in range(point.channels) if c not in channels]
    onnx.checker.check_model(result.model, full_check=True)
    assert signature(result.model) == signature(model)
    assert list(result.model.opset_import) == list(model.opset_import)
    assert result.model.ir_version == model.ir_version
    assert result.model.producer_name == model.producer_name

    reference = mask_channels(model, point, channels)
    for batch in ((1,) if name == "caffe" else (1, 3)):
        feeds = random_input(model, batch, seed=batch)
        np.testing.assert_allclose(run(result.model, feeds), run(reference, feeds), rtol=0, atol=1e-5)

    assert result.physically_removed == ((name, where) not in MASKED)
    if result.physically_removed:
        assert count_parameters(result.model) < count_parameters(model)
        assert count_flops(result.model) < count_flops(model)
    else:
        assert any(a["action"] == "kept" for a in result.actions)
        assert count_parameters(result.model) <= count_parameters(model)


@pytest.mark.parametrize("name,exporter,index,pattern", BLOCKS)
def test_block_output_is_removed_through_its_join(zoo_model, name, exporter, index, pattern):
    model = zoo_model(name, exporter)
    point = find_prune_points(model)[index]
    channels = pick_channels(point.channels, 0.5, seed=3)
    result = prune_channels(model, point, channels)
    assert result.physically_removed, result.mask_reason
    assert count_parameters(result.model) < count_parameters(model)
    removed = {a["node"] for a in result.actions if a["action"] == "removed"}
    assert set(point.sources) <= removed
    for batch in (1, 3):
        feeds = random_input(model, batch, seed=batch)
        np.testing.assert_allclose(run(result.model, feeds), run(mask_channels(model, point, channels), feeds),
                                   rtol=0, atol=1e-5)


def test_depthwise_prune_point_loses_whole_groups(zoo_model):
    """A depthwise conv's output: the depthwise conv loses those groups and the expand conv that
    feeds it (read by nothing else) loses the same output channels."""
    model = zoo_model("mobilenetv2", "legacy")
    depthwise = {n.name: n for n in model.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)}
    points = [p for p in find_prune_points(model) if p.chain[0] in depthwise]
    assert points[0].selections  # features.3 has no expand conv: its input is also the residual's identity
    point = points[1]
    channels = pick_channels(point.channels, 0.5, seed=1)
    result = prune_channels(model, point, channels)
    conv = next(n for n in result.model.graph.node if n.name == point.chain[0])
    group = next(a.i for a in conv.attribute if a.name == "group")
    assert group == point.channels - len(channels)
    assert len(point.sources) == 1 and point.sources[0] not in depthwise
    feeds = random_input(model, 2)
    np.testing.assert_allclose(run(result.model, feeds), run(mask_channels(model, point, channels), feeds),
                               rtol=0, atol=1e-5)


def test_squeezenet_classifier_conv_is_masked_not_removed(zoo_model):
    model = zoo_model("squeezenet", "legacy")
    point = find_prune_points(model)[-1]
    result = prune_channels(model, point, [0, 3])
    assert not result.physically_removed
    feeds = random_input(model, 2)
    out = run(result.model, feeds)
    assert out.shape == (2, 10) and np.all(out[:, [0, 3]] == 0)


def test_deepid_conv3_removes_from_both_readers(zoo_model):
    model = zoo_model("deepid", "legacy")
    point = resolve_prune_point(model, "/conv3/Conv")
    result = prune_channels(model, point, [1, 2, 5])
    removed = {a["node"] for a in result.actions if a["action"] == "removed"}
    assert removed == {"/conv3/Conv", "/conv4/Conv", "/fc_conv3/Gemm"}


def test_old_converter_graph_updates_reshape_constant_and_initializer_inputs(zoo_model):
    model = zoo_model("caffe")
    result = prune_channels(model, resolve_prune_point(model, None), [0, 1, 2, 3])
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert inits["flatten_shape"].tolist() == [1, 12 * 8 * 8]
    declared = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in result.model.graph.input}
    assert declared["fc1_w"] == [32, 12 * 8 * 8] and declared["conv2_w"] == [12, 12, 3, 3]
    assert [v.name for v in result.model.graph.input] == [v.name for v in model.graph.input]


def test_input_model_is_not_modified(zoo_model):
    model = zoo_model("alexnet", "legacy")
    before = model.SerializeToString()
    prune_channels(model, resolve_prune_point(model, None), [0, 1])
    mask_channels(model, resolve_prune_point(model, None), [0, 1])
    assert model.SerializeToString() == before


def test_pruning_every_channel_is_refused(zoo_model):
    model = zoo_model("alexnet", "legacy")
    point = resolve_prune_point(model, None)
    with pytest.raises(BadOptionError, match="refusing to prune all 16 channels"):
        prune_channels(model, point, range(point.channels))


@pytest.mark.parametrize("bad", [[-1], [16], [0, 99]])
def test_channel_ids_out_of_range_are_refused(zoo_model, bad):
    model = zoo_model("alexnet", "legacy")
    point = resolve_prune_point(model, None)
    with pytest.raises(BadOptionError, match="out of range"):
        prune_channels(model, point, bad)
    with pytest.raises(BadOptionError, match="out of range"):
        mask_channels(model, point, bad)


def test_prune_point_of_another_model_is_refused(zoo_model):
    point = resolve_prune_point(zoo_model("caffe"), None)
    with pytest.raises(BadOptionError, match="is not in this model"):
        prune_channels(zoo_model("alexnet", "legacy"), point, [0])
    with pytest.raises(BadOptionError, match="is not in this model"):
        mask_channels(zoo_model("alexnet", "legacy"), point, [0])


def _small_graph(nodes, inits, out_shape, opset=13) -> onnx.ModelProto:
    graph = onnx.helper.make_graph(
        nodes, "small", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4, 6, 6])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", *out_shape])],
        [onnx.numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model)


def test_residual_after_sigmoid_is_masked_with_a_mask_mul():
    rng = np.random.default_rng(0)
    nodes = [onnx.helper.make_node("Conv", ["x", "w", "b"], ["c"], "conv"),
             onnx.helper.make_node("Sigmoid", ["c"], ["s"], "sigmoid"),
             onnx.helper.make_node("Add", ["s", "x"], ["y"], "residual")]
    model = _small_graph(nodes, {"w": rng.standard_normal((4, 4, 1, 1), np.float32),
                                 "b": rng.standard_normal(4).astype(np.float32)}, [4, 6, 6])
    point = resolve_prune_point(model, "sigmoid")
    assert point.tensor == "s"
    result = prune_channels(model, point, [1, 2])
    assert "residual" in result.mask_reason
    assert not result.physically_removed
    assert [n.op_type for n in result.model.graph.node].count("Mul") == 1  # sigmoid(0) = 0.5: zeros are not enough
    feeds = random_input(model, 2)
    np.testing.assert_allclose(run(result.model, feeds), run(mask_channels(model, point, [1, 2]), feeds), atol=1e-6)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_constant_that_pruned_channels_become_is_folded_into_the_gemm_bias(trans_b):
    """Flatten -> Add(per-feature constant) turns the removed (zero) features into constants, which the
    Gemm must absorb into C (scaled by alpha / beta) for transB 0 and 1."""
    rng = np.random.default_rng(1)
    features = 4 * 6 * 6
    weight = (0.1 * rng.standard_normal((features, 3) if not trans_b else (3, features))).astype(np.float32)
    nodes = [onnx.helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             onnx.helper.make_node("Relu", ["c"], ["r"], "relu"),
             onnx.helper.make_node("Flatten", ["r"], ["f"], "flatten"),
             onnx.helper.make_node("Add", ["f", "shift"], ["a"], "shift"),
             onnx.helper.make_node("Gemm", ["a", "fc_w", "fc_b"], ["y"], "fc", transB=trans_b, alpha=0.5, beta=2.0)]
    model = _small_graph(nodes, {"w": (0.3 * rng.standard_normal((4, 4, 3, 3))).astype(np.float32),
                                 "shift": rng.standard_normal(features).astype(np.float32),
                                 "fc_w": weight, "fc_b": rng.standard_normal(3).astype(np.float32)}, [3])
    point = resolve_prune_point(model, None)
    result = prune_channels(model, point, [0, 3])
    assert result.physically_removed
    assert any(a["action"] == "folded" and a["node"] == "fc" for a in result.actions)
    feeds = random_input(model, 3)
    np.testing.assert_allclose(run(result.model, feeds), run(mask_channels(model, point, [0, 3]), feeds),
                               rtol=0, atol=1e-5)
