"""Prune-point discovery and resolution on every zoo model and exporter."""
from __future__ import annotations

import onnx
import pytest
from onnx import helper

from fp_onnx.errors import BadModelError, BadOptionError
from fp_onnx.prune_point import PrunePoint, find_prune_points, resolve_prune_point
from model_zoo import zoo_cases

# Per model: the default point's (channels, channel axis, op type of its producer, label).
EXPECTED = {
    "alexnet": (16, 1, "MaxPool", "features"), "deepid": (20, 1, "Relu", "conv4"),
    "resnet18": (64, 1, "Relu", "layers.7"), "mobilenetv2": (32, 1, "Clip", "features"),
    "densenet": (16, 1, "Relu", "features.11"), "squeezenet": (24, 1, "Concat", "features.6"),
    "convbn": (16, 1, "MaxPool", "features"), "keras_nhwc": (12, 3, "Transpose", "conv2"),
    "caffe": (16, 1, "MaxPool", "pool2"),
}


def _conv_names(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type == "Conv"]


@pytest.mark.parametrize("name,exporter", zoo_cases())
def test_every_conv_is_in_a_point_and_the_default_is_the_last_feature_map(zoo_model, name, exporter):
    model = zoo_model(name, exporter)
    points = find_prune_points(model)
    chains = [set(p.chain) for p in points]
    assert all(sum(conv in chain for chain in chains) == 1 for conv in _conv_names(model))
    defaults = [p for p in points if p.is_default]
    assert len(defaults) == 1
    default = defaults[0]
    assert (default.channels, default.channel_axis, default.op_type, default.label) == EXPECTED[name]
    # The last point, except SqueezeNet whose last feature map is its conv classifier's class scores.
    assert default == points[-2 if name == "squeezenet" else -1]
    assert default.removable and default.sources and not default.mask_reason
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


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_residual_default_is_the_last_block_output(zoo_model, exporter):
    """The classifier reads the last residual block's Add -> ReLU, not a conv branch inside it; the
    conv branch is still listed, masked (its Add's other branch keeps the channels)."""
    points = find_prune_points(zoo_model("resnet18", exporter))
    default = next(p for p in points if p.is_default)
    assert default.chain[0].endswith("Add") or "add" in default.chain[0]
    assert len(default.sources) == 1 and len(default.selections) == 1  # conv branch + identity branch
    branch = next(p for p in points if p.tensor == next(p.tensor for p in points if p.chain == (default.sources[0],)))
    assert not branch.removable and "residual" in branch.mask_reason


def test_deepid_conv3_and_conv4_are_both_prune_points(zoo_model):
    for exporter in ("legacy", "dynamo"):
        points = find_prune_points(zoo_model("deepid", exporter))
        conv3, conv4 = points[2], points[3]
        # conv3's pooled output feeds both fc_conv3 (via Flatten) and conv4, so its chain ends at the pool.
        assert (conv3.channels, conv3.spatial, len(conv3.chain)) == (16, (5, 4), 3)
        assert (conv4.channels, conv4.spatial, conv4.is_default) == (20, (4, 3), True)


def test_nhwc_point_follows_the_layout_transpose(zoo_model):
    point = resolve_prune_point(zoo_model("keras_nhwc"), None)
    assert point.chain == ("model/conv2/Conv2D", "model/conv2/Relu", "model/conv2/Relu__transpose")
    assert (point.tensor, point.channel_axis, point.spatial) == ("to_nhwc", 3, (16, 16))
    assert point.names == ("conv2", "model/conv2")


def test_mobilenet_depthwise_convs_start_removable_points(zoo_model):
    model = zoo_model("mobilenetv2", "legacy")
    depthwise = {n.name for n in model.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)}
    points = [p for p in find_prune_points(model) if p.chain[0] in depthwise]
    assert points and all(p.removable for p in points)


def test_resolve_accepts_chain_nodes_tensors_and_layer_names(zoo_model):
    model = zoo_model("caffe")
    conv1 = find_prune_points(model)[0]
    for name in ("conv1", "relu1", "pad1", "pool1"):
        assert resolve_prune_point(model, name) == conv1
    resnet = zoo_model("resnet18", "legacy")
    assert resolve_prune_point(resnet, "layers.7") == resolve_prune_point(resnet, None)
    assert resolve_prune_point(resnet, "layers.7.conv1").chain[0] == "/layers/layers.7/conv1/Conv"


def test_to_dict_is_plain_data():
    point = PrunePoint("t", 4, 1, (2, "h"), True, producer="r", op_type="Relu", chain=("c", "r"), names=("b",),
                       sources=("c",))
    assert point.to_dict() == {"tensor": "t", "channels": 4, "channel_axis": 1, "spatial": [2, "h"],
                               "is_default": True, "producer": "r", "op_type": "Relu", "chain": ["c", "r"],
                               "names": ["b"], "removable": True, "sources": ["c"], "selections": [],
                               "mask_reason": "", "label": "b"}


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
    with pytest.raises(BadModelError, match="no convolutional feature map"):
        find_prune_points(helper.make_model(graph))


def test_hostile_dynamo_name_metadata_is_ignored():
    """The name-scope metadata is vendor input: nested, oversized or non-list values name nothing."""
    from fp_onnx.vendor_names import node_scopes

    node = helper.make_node("Relu", ["x"], ["y"], "node_relu")
    model = helper.make_model(helper.make_graph([node], "g", [], []))
    for value in ("[" * 5000 + "]" * 5000, "['', 'a'] + 1", "{'a': 1}", "[1, 2]", "['', 'ok', 'call']"):
        model.graph.node[0].ClearField("metadata_props")
        entry = model.graph.node[0].metadata_props.add()
        entry.key, entry.value = "pkg.torch.onnx.name_scopes", value
        assert node_scopes(model)["node_relu"] == (("ok",) if value.endswith("'call']") else ())
