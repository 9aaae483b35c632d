"""Prune-point discovery and resolution on every zoo model and exporter."""
from __future__ import annotations

import onnx
import pytest
from onnx import helper

from fp_onnx.errors import BadModelError, BadOptionError
from fp_onnx.prune_point import PrunePoint, find_prune_points, resolve_prune_point
from model_zoo import zoo_cases

# Per model: (number of convs, channels and channel axis of the default prune point).
EXPECTED = {
    "alexnet": (5, 16, 1), "deepid": (4, 20, 1), "resnet18": (20, 64, 1), "mobilenetv2": (16, 32, 1),
    "densenet": (10, 4, 1), "squeezenet": (11, 12, 1), "convbn": (2, 16, 1), "keras_nhwc": (2, 12, 3),
    "caffe": (2, 16, 1),
}


def _conv_names(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type == "Conv"]


@pytest.mark.parametrize("name,exporter", zoo_cases())
def test_every_conv_is_found_and_the_default_is_the_last_feature_conv(zoo_model, name, exporter):
    model = zoo_model(name, exporter)
    points = find_prune_points(model)
    n_convs, channels, axis = EXPECTED[name]
    assert [p.conv for p in points] == _conv_names(model) and len(points) == n_convs
    defaults = [p for p in points if p.is_default]
    assert len(defaults) == 1
    default = defaults[0]
    assert (default.channels, default.channel_axis) == (channels, axis)
    # The last conv, except SqueezeNet whose last conv is the classifier.
    expected_index = len(points) - 2 if name == "squeezenet" else len(points) - 1
    assert default == points[expected_index]
    assert resolve_prune_point(model, None) == default


@pytest.mark.parametrize("name,exporter", zoo_cases())
def test_point_tensor_shape_matches_channels_and_spatial(zoo_model, name, exporter):
    model = zoo_model(name, exporter)
    shapes = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.output]}
    for point in find_prune_points(model):
        shape = shapes[point.tensor]
        assert shape[point.channel_axis] == point.channels
        assert tuple(d for i, d in enumerate(shape) if i not in (0, point.channel_axis)) == point.spatial


def test_deepid_conv3_and_conv4_are_both_prune_points(zoo_model):
    for exporter in ("legacy", "dynamo"):
        points = find_prune_points(zoo_model("deepid", exporter))
        conv3, conv4 = points[2], points[3]
        # conv3's pooled output feeds both fc_conv3 (via Flatten) and conv4, so its chain ends at the pool.
        assert (conv3.channels, conv3.spatial, len(conv3.chain)) == (16, (5, 4), 2)
        assert (conv4.channels, conv4.spatial, conv4.is_default) == (20, (4, 3), True)


def test_nhwc_point_follows_the_layout_transpose(zoo_model):
    point = resolve_prune_point(zoo_model("keras_nhwc"), None)
    assert point.conv == "model/conv2/Conv2D"
    assert point.chain == ("model/conv2/Relu", "model/conv2/Relu__transpose")
    assert (point.tensor, point.channel_axis, point.spatial) == ("to_nhwc", 3, (16, 16))


def test_mobilenet_depthwise_convs_are_prune_points_with_groups(zoo_model):
    points = find_prune_points(zoo_model("mobilenetv2", "legacy"))
    depthwise = [p for p in points if p.groups > 1]
    assert depthwise and all(p.groups == p.channels for p in depthwise)
    assert depthwise[0].to_dict()["groups"] == depthwise[0].groups


def test_resolve_accepts_conv_output_chain_nodes_and_tensors(zoo_model):
    model = zoo_model("caffe")
    conv1 = find_prune_points(model)[0]
    for name in ("conv1", "conv1", "relu1", "pad1", "pool1", "pad1"):
        assert resolve_prune_point(model, name) == conv1


def test_to_dict_is_plain_data():
    point = PrunePoint("c", "c_out", "t", ("r",), 4, 1, (2, "h"), True, groups=2)
    assert point.to_dict() == {"conv": "c", "conv_output": "c_out", "tensor": "t", "chain": ["r"], "channels": 4,
                               "channel_axis": 1, "spatial": [2, "h"], "is_default": True, "groups": 2}


def test_unknown_layer_is_refused_with_a_hint(zoo_model):
    with pytest.raises(BadOptionError, match=r"no layer named 'nope' in model; run `fp-onnx layers m.onnx`"):
        resolve_prune_point(zoo_model("caffe"), "nope", model_name="m.onnx")


@pytest.mark.parametrize("layer,op_type", [("fc1", "Gemm"), ("prob", "Softmax"), ("fc2_w", "constant")])
def test_non_conv_layer_is_refused(zoo_model, layer, op_type):
    with pytest.raises(BadOptionError, match=f"layer '{layer}' is a {op_type}.*not a conv feature map; run "
                                             r"`fp-onnx layers MODEL`"):
        resolve_prune_point(zoo_model("caffe"), layer)


def test_model_without_conv_is_a_bad_model():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], "relu")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])])
    with pytest.raises(BadModelError, match="no Conv"):
        find_prune_points(helper.make_model(graph))
