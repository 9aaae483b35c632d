"""One tiny graph per surgery pattern (upstream region handlers, downstream handlers, joins),
each checked against the masked reference, plus the registries' refusal to overwrite a handler."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import model_zoo
from fp_onnx.channel_ops import channel_op
from fp_onnx.prune_point import resolve_prune_point
from fp_onnx.surgery import mask_channels, prune_channels
from fp_onnx.surgery.downstream import downstream
from fp_onnx.surgery.upstream import upstream
from test_surgery import run

RNG = np.random.default_rng(11)


def _w(*shape: int, scale: float = 0.4) -> np.ndarray:
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


def _model(nodes, inits: dict, input_shape=("N", 4, 6, 6), output_shape=("N", 3), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "pattern", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(output_shape))],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return model_zoo.load_for_tests_proto(model)


def _head(source: str, channels: int) -> tuple[list, dict]:
    """source -> GlobalAveragePool -> Flatten -> Gemm(3)."""
    return ([helper.make_node("GlobalAveragePool", [source], ["pooled"], "pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], "flatten"),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], "fc", transB=1)],
            {"fc_w": _w(3, channels), "fc_b": _w(3)})


def _check(model: onnx.ModelProto, layer: str, channels: list[int]):
    point = resolve_prune_point(model, layer)
    result = prune_channels(model, point, channels)
    feeds = model_zoo.random_input(model, 3, seed=4)
    np.testing.assert_allclose(run(result.model, feeds), run(mask_channels(model, point, channels), feeds),
                               rtol=1e-5, atol=1e-5)
    return point, result


def _actions(result, action: str) -> dict[str, str]:
    return {a["node"]: a["op_type"] for a in result.actions if a["action"] == action}


def test_silu_diamond_is_one_chain_step_and_its_conv_loses_outputs():
    head, inits = _head("silu", 6)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["gate"], "sigmoid"),
             helper.make_node("Mul", ["c", "gate"], ["silu"], "silu"), *head]
    model = _model(nodes, {"w": _w(6, 4, 3, 3), "b": _w(6), **inits})
    point, result = _check(model, None, [1, 4])
    assert point.chain == ("conv", "sigmoid", "silu") and point.tensor == "silu"
    assert _actions(result, "removed") == {"conv": "Conv", "fc": "Gemm"}


def test_residual_add_removes_the_conv_branch_and_selects_the_identity_branch():
    """relu -> conv_b -> Add(., relu) -> ReLU -> GAP -> Squeeze -> MatMul + Add (a tf2onnx-style head)."""
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], "conv_a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], "relu_a"),
             helper.make_node("Conv", ["r", "wb", "bb"], ["b"], "conv_b", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["b", "r"], ["s"], "residual"),
             helper.make_node("Relu", ["s"], ["out"], "block_out"),
             helper.make_node("GlobalAveragePool", ["out"], ["pooled"], "pool"),
             helper.make_node("Squeeze", ["pooled", "axes"], ["squeezed"], "squeeze"),
             helper.make_node("MatMul", ["squeezed", "dense_w"], ["mm"], "dense"),
             helper.make_node("Add", ["mm", "dense_b"], ["y"], "dense_bias")]
    model = _model(nodes, {"wa": _w(4, 4, 3, 3), "wb": _w(4, 4, 3, 3), "bb": _w(4), "axes": np.array([2, 3]),
                           "dense_w": _w(4, 3), "dense_b": _w(3)})
    point, result = _check(model, "block_out", [0, 2])
    assert point.is_default and point.chain == ("residual", "block_out")
    assert point.sources == ("conv_b",) and len(point.selections) == 1
    assert _actions(result, "removed") == {"conv_b": "Conv", "dense": "MatMul"}
    assert list(_actions(result, "inserted").values()) == ["Gather"]


def test_concat_input_that_loses_every_channel_leaves_the_concat():
    head, inits = _head("cat", 5)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], "conv0"),
             helper.make_node("Conv", ["x", "w1"], ["c1"], "conv1"),
             helper.make_node("Concat", ["c0", "c1"], ["cat"], "concat", axis=1), *head]
    model = _model(nodes, {"w0": _w(2, 4, 1, 1), "w1": _w(3, 4, 1, 1), **inits})
    point, result = _check(model, "concat", [0, 1, 3])
    concat = next(n for n in result.model.graph.node if n.op_type == "Concat")
    assert len(concat.input) == 1 and "conv0" not in {n.name for n in result.model.graph.node}


def test_concat_drops_one_input_and_selects_from_another_that_is_read_elsewhere():
    """Input 0 loses every channel (it leaves the Concat); input 1 is also pooled by a second head, so
    it keeps its channels and the Concat reads a selection of them."""
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], "conv0"),
             helper.make_node("Conv", ["x", "w1"], ["c1"], "conv1"),
             helper.make_node("Concat", ["c0", "c1"], ["cat"], "concat", axis=1),
             helper.make_node("GlobalAveragePool", ["cat"], ["p0"], "pool0"),
             helper.make_node("Flatten", ["p0"], ["f0"], "flatten0"),
             helper.make_node("Gemm", ["f0", "fc0"], ["y0"], "head0", transB=1),
             helper.make_node("GlobalMaxPool", ["c1"], ["p1"], "pool1"),
             helper.make_node("Flatten", ["p1"], ["f1"], "flatten1"),
             helper.make_node("Gemm", ["f1", "fc1"], ["y1"], "head1", transB=1),
             helper.make_node("Add", ["y0", "y1"], ["y"], "heads")]
    model = _model(nodes, {"w0": _w(2, 4, 1, 1), "w1": _w(3, 4, 1, 1), "fc0": _w(3, 5), "fc1": _w(3, 3)})
    point, result = _check(model, "concat", [0, 1, 3])
    concat = next(n for n in result.model.graph.node if n.op_type == "Concat")
    gather = next(n for n in result.model.graph.node if n.op_type == "Gather")
    assert list(concat.input) == [gather.output[0]] and gather.input[0] == "c1"


def test_channels_last_matmul_is_a_source_and_its_bias_is_sliced():
    """Conv -> Transpose to NHWC -> MatMul + Add (a Linear over channels, as ConvNeXt blocks) -> back."""
    head, inits = _head("nchw", 5)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], "conv"),
             helper.make_node("Transpose", ["c"], ["nhwc"], "to_nhwc", perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["nhwc", "lin_w"], ["lin"], "linear"),
             helper.make_node("Add", ["lin", "lin_b"], ["biased"], "linear_bias"),
             helper.make_node("Transpose", ["biased"], ["nchw"], "to_nchw", perm=[0, 3, 1, 2]), *head]
    model = _model(nodes, {"w": _w(4, 4, 1, 1), "lin_w": _w(4, 5), "lin_b": _w(5), **inits})
    point, result = _check(model, "linear", [1, 3])
    assert point.chain == ("linear", "linear_bias", "to_nchw") and point.channel_axis == 1
    assert _actions(result, "removed") == {"linear": "MatMul", "fc": "Gemm"}
    assert _actions(result, "sliced") == {"linear_bias": "Add"}


def test_layer_norm_over_the_channels_is_masked_with_its_reason():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], "conv"),
             helper.make_node("GlobalAveragePool", ["c"], ["pooled"], "pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], "flatten"),
             helper.make_node("LayerNormalization", ["flat", "ln_s", "ln_b"], ["normed"], "norm", axis=-1),
             helper.make_node("Gemm", ["normed", "fc_w"], ["y"], "fc", transB=1)]
    model = _model(nodes, {"w": _w(5, 4, 1, 1), "ln_s": _w(5) + 1, "ln_b": _w(5), "fc_w": _w(3, 5)})
    point, result = _check(model, "conv", [2])
    assert not point.removable and "every channel" in point.mask_reason
    assert not result.physically_removed and result.mask_reason.startswith("LayerNormalization 'norm' normalises over the channel axis")


def test_unsqueeze_moves_the_channel_axis_for_a_channels_last_reader():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], "conv"),
             helper.make_node("GlobalAveragePool", ["c"], ["pooled"], "pool"),
             helper.make_node("Flatten", ["pooled"], ["flat"], "flatten"),
             helper.make_node("Unsqueeze", ["flat", "axes"], ["row"], "unsqueeze"),
             helper.make_node("MatMul", ["row", "mm_w"], ["mm"], "dense"),
             helper.make_node("Flatten", ["mm"], ["y"], "out")]
    model = _model(nodes, {"w": _w(5, 4, 1, 1), "axes": np.array([1]), "mm_w": _w(5, 3)})
    _, result = _check(model, "conv", [0, 4])
    assert _actions(result, "removed") == {"conv": "Conv", "dense": "MatMul"}


@pytest.mark.parametrize("channels,source", [([2, 3], True), ([1], False)])
def test_grouped_conv_loses_whole_groups_or_is_selected_after(channels, source):
    head, inits = _head("g", 4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["g"], "grouped", group=2), *head]
    model = _model(nodes, {"w": _w(4, 2, 1, 1), **inits})
    _, result = _check(model, "grouped", channels)
    assert ("grouped" in _actions(result, "removed")) == source
    assert list(_actions(result, "inserted").values()) == ["Gather"]  # its kept inputs, or its kept outputs


def test_registries_refuse_to_overwrite_a_handler():
    with pytest.raises(ValueError, match="already registered"):
        downstream("Conv")(lambda *args: [])
    with pytest.raises(ValueError, match="already registered"):
        upstream("Conv")(lambda *args: None)
    with pytest.raises(ValueError, match="already registered"):
        channel_op("Relu")(lambda *args: None)
