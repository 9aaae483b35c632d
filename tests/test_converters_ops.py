"""Per-op exactness of onnx_to_torch on hand-built graphs, for the op forms torch's exporters do not emit.

tf2onnx NHWC layouts, Caffe-era attribute-axes opsets, asymmetric and auto pads,
Resize/Upsample modes, LRN, shape arithmetic (Shape/Gather/Range/Expand/Where).
Reference: onnxruntime on the same graph.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fp_onnx.converters import onnx_to_torch, reexport, supported_ops
from fp_onnx.errors import BadModelError, BadOptionError, UnsupportedOpError

FLOAT = TensorProto.FLOAT
RNG = np.random.default_rng(0)


def weights(*shape: int, scale: float = 0.5) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def make_model(nodes, inputs: dict[str, list[int]], outputs: list[str], opset: int,
               inits: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A checked, shape-inferred model; float inputs of the given shapes, outputs of any type."""
    graph = helper.make_graph(
        nodes, "case",
        [helper.make_tensor_value_info(name, FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_empty_tensor_value_info(name) for name in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    return onnx.shape_inference.infer_shapes(model)


def node(op_type, inputs, outputs, **attrs):
    return helper.make_node(op_type, inputs, outputs, f"{op_type.lower()}_{outputs[0]}", **attrs)


def single(op_type, shape, opset, inits=None, extra_inputs=(), **attrs):
    """One node on input x (plus named initializers) producing y."""
    return make_model([node(op_type, ["x", *extra_inputs], ["y"], **attrs)], {"x": shape}, ["y"], opset, inits)


def i64(*values):
    return np.array(values, np.int64)


def f32(*values):
    return np.array(values, np.float32)


X4 = [2, 3, 9, 10]  # odd/even spatial sizes exercise the padding rules


CASES = {
    # ---------------------------------------------------------------- conv and pooling padding
    "conv_same_upper_even_kernel": lambda: single("Conv", X4, 13, {"w": weights(4, 3, 4, 4)}, ["w"],
                                                  auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv_same_lower": lambda: single("Conv", X4, 11, {"w": weights(4, 3, 2, 3)}, ["w"], auto_pad="SAME_LOWER"),
    "conv_valid_dilated_grouped": lambda: single("Conv", [2, 4, 9, 10], 13, {"w": weights(6, 2, 3, 3), "b": weights(6)},
                                                 ["w", "b"], auto_pad="VALID", dilations=[2, 1], group=2),
    "conv_asymmetric_pads_1d": lambda: single("Conv", [2, 3, 11], 13, {"w": weights(4, 3, 3)}, ["w"],
                                              pads=[0, 2], strides=[2]),
    "conv_transpose_asymmetric": lambda: single("ConvTranspose", X4, 13, {"w": weights(3, 4, 3, 3), "b": weights(4)},
                                                ["w", "b"], strides=[2, 2], pads=[1, 0, 0, 1],
                                                output_padding=[1, 1]),
    "conv_transpose_output_shape_grouped": lambda: single("ConvTranspose", [2, 4, 5, 6], 13,
                                                          {"w": weights(4, 2, 3, 3)}, ["w"], strides=[2, 2],
                                                          group=2, output_shape=[10, 12]),
    "maxpool_asymmetric_ceil": lambda: single("MaxPool", X4, 12, kernel_shape=[3, 3], strides=[2, 2],
                                              pads=[0, 1, 1, 0], ceil_mode=1),
    # onnxruntime ignores dilations when resolving auto_pad for pooling, so SAME is tested undilated.
    "maxpool_same_upper": lambda: single("MaxPool", X4, 12, kernel_shape=[2, 3], strides=[2, 2],
                                         auto_pad="SAME_UPPER"),
    "maxpool_dilated_pads": lambda: single("MaxPool", X4, 12, kernel_shape=[2, 3], strides=[1, 2],
                                           pads=[1, 2, 0, 2], dilations=[2, 2], ceil_mode=1),
    "maxpool_opset8_storage_order": lambda: single("MaxPool", X4, 8, kernel_shape=[2, 2], strides=[2, 2],
                                                   storage_order=0),
    "avgpool_include_pad_ceil": lambda: single("AveragePool", X4, 19, kernel_shape=[3, 3], strides=[2, 2],
                                               pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1),
    "avgpool_asymmetric_exclude_pad": lambda: single("AveragePool", X4, 19, kernel_shape=[3, 2], strides=[2, 1],
                                                     pads=[0, 1, 2, 0]),
    "avgpool_dilated_19": lambda: single("AveragePool", X4, 19, kernel_shape=[2, 2], dilations=[2, 2],
                                         pads=[1, 1, 1, 1], count_include_pad=1),
    "avgpool_same_lower_ceil": lambda: single("AveragePool", X4, 11, kernel_shape=[3, 3], strides=[2, 2],
                                              auto_pad="SAME_LOWER"),
    "global_max_pool": lambda: single("GlobalMaxPool", X4, 13),
    "lrn_odd": lambda: single("LRN", [2, 7, 4, 4], 13, size=5, alpha=0.1, beta=0.75, bias=2.0),
    # ---------------------------------------------------------------- normalisation and activations
    "batchnorm_inference_opset9": lambda: single("BatchNormalization", X4, 9,
                                                 {"s": weights(3), "b": weights(3), "m": weights(3),
                                                  "v": np.abs(weights(3)) + 0.5}, ["s", "b", "m", "v"],
                                                 epsilon=1e-3),
    "instance_norm": lambda: single("InstanceNormalization", X4, 13, {"s": weights(3), "b": weights(3)}, ["s", "b"]),
    "layer_norm_axis1": lambda: single("LayerNormalization", [2, 3, 4], 17, {"s": weights(3, 4), "b": weights(4)},
                                       ["s", "b"], axis=1),
    "prelu_broadcast": lambda: single("PRelu", X4, 13, {"slope": weights(3, 1, 1)}, ["slope"]),
    "elu": lambda: single("Elu", X4, 13, alpha=0.7),
    "selu_custom": lambda: single("Selu", X4, 13, alpha=1.5, gamma=1.1),
    "hard_sigmoid": lambda: single("HardSigmoid", X4, 13, alpha=0.3, beta=0.4),
    "hard_swish": lambda: single("HardSwish", X4, 14),
    "leaky_relu": lambda: single("LeakyRelu", X4, 13, alpha=0.3),
    "gelu_tanh": lambda: single("Gelu", X4, 20, approximate="tanh"),
    "erf": lambda: single("Erf", X4, 13),
    "clip_attributes_opset6": lambda: single("Clip", X4, 6, min=-0.5, max=0.3),
    "clip_inputs_min_only": lambda: single("Clip", X4, 13, {"lo": f32(-0.2)}, ["lo"]),
    "softmax_opset11_flattens": lambda: single("Softmax", X4, 11, axis=1),
    "log_softmax_opset13_axis": lambda: single("LogSoftmax", X4, 13, axis=1),
    # ---------------------------------------------------------------- reductions, attribute vs input axes
    "reduce_mean_attr_axes": lambda: single("ReduceMean", X4, 11, axes=[2, -1], keepdims=0),
    "reduce_max_input_axes_18": lambda: single("ReduceMax", X4, 18, {"axes": i64(1)}, ["axes"]),
    "reduce_sum_13_all": lambda: single("ReduceSum", X4, 13, keepdims=0),
    "reduce_sum_13_noop": lambda: single("ReduceSum", X4, 13, noop_with_empty_axes=1),
    # ---------------------------------------------------------------- layout and slicing
    "squeeze_unsqueeze_attr_opset11": lambda: make_model(
        [node("Unsqueeze", ["x"], ["u"], axes=[0, -1]), node("Squeeze", ["u"], ["y"], axes=[0])],
        {"x": [2, 3, 4]}, ["y"], 11),
    "squeeze_unsqueeze_input_opset13": lambda: make_model(
        [node("Unsqueeze", ["x", "a"], ["u"]), node("Squeeze", ["u"], ["y"])], {"x": [2, 3, 4]}, ["y"], 13,
        {"a": i64(1, 3)}),
    "split_attr_opset11": lambda: make_model([node("Split", ["x"], ["a", "b"], axis=1, split=[1, 2])],
                                             {"x": X4}, ["a", "b"], 11),
    "split_input_opset13": lambda: make_model([node("Split", ["x", "s"], ["a", "b"], axis=-1)],
                                              {"x": X4}, ["a", "b"], 13, {"s": i64(7, 3)}),
    "split_num_outputs_18": lambda: make_model([node("Split", ["x"], ["a", "b", "c"], axis=3, num_outputs=3)],
                                               {"x": X4}, ["a", "b", "c"], 18),
    "slice_attr_opset9": lambda: single("Slice", X4, 9, starts=[1, -4], ends=[100, -1], axes=[2, 3]),
    "slice_negative_steps": lambda: single("Slice", X4, 13, {"s": i64(-1, 8), "e": i64(-1000, 1), "a": i64(3, 2),
                                                             "st": i64(-2, -3)}, ["s", "e", "a", "st"]),
    "flatten_axes": lambda: make_model([node("Flatten", ["x"], ["y"], axis=0), node("Flatten", ["x"], ["z"], axis=-1)],
                                       {"x": X4}, ["y", "z"], 13),
    "transpose_default_perm": lambda: single("Transpose", X4, 13),
    "pad_attr_reflect_opset9": lambda: single("Pad", X4, 9, pads=[0, 0, 1, 2, 0, 0, 2, 1], mode="reflect"),
    "pad_edge_negative_opset13": lambda: single("Pad", X4, 13, {"p": i64(0, 0, 2, -1, 0, 0, 1, 3)}, ["p"],
                                                mode="edge"),
    "pad_constant_value_axes_18": lambda: single("Pad", X4, 18, {"p": i64(1, 2, 3, 0), "v": f32(1.5),
                                                                 "ax": i64(1, 3)}, ["p", "v", "ax"]),
    "reshape_zero_and_minus_one": lambda: single("Reshape", X4, 13, {"shape": i64(0, -1, 5)}, ["shape"]),
    "gathernd_pairs_negative": lambda: single("GatherND", X4, 13, {"i": np.array([[[0, 2], [1, -1]], [[-2, 0], [1, 1]]],
                                                                               np.int64)}, ["i"]),
    "gathernd_batch_dims": lambda: single("GatherND", X4, 13, {"i": np.array([[[0, 8], [2, 0], [1, -3]],
                                                                          [[2, 4], [0, 0], [-1, 1]]], np.int64)},
                                          ["i"], batch_dims=1),
    "gathernd_full_index_opset11": lambda: single("GatherND", [3, 4], 11, {"i": np.array([[2, 3], [0, -4]], np.int64)},
                                                  ["i"]),
    "gather_negative_indices": lambda: single("Gather", X4, 13, {"i": np.array([[0, -1], [1, 1]], np.int64)}, ["i"],
                                              axis=1),
    # ---------------------------------------------------------------- tf2onnx NHWC, Caffe Pad -> MaxPool
    "tf2onnx_nhwc_conv_block": lambda: make_model(
        [node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
         node("Conv", ["nchw", "w", "b"], ["c"], auto_pad="SAME_UPPER", strides=[2, 2]),
         node("Relu", ["c"], ["r"]),
         node("Transpose", ["r"], ["nhwc"], perm=[0, 2, 3, 1]),
         node("Mul", ["nhwc", "scale"], ["m"]),
         node("Add", ["m", "shift"], ["y"])],
        {"x": [2, 9, 10, 3]}, ["y"], 13,
        {"w": weights(4, 3, 3, 3), "b": weights(4), "scale": weights(4), "shift": weights(4)}),
    "caffe_pad_then_maxpool": lambda: make_model(
        [node("Pad", ["x"], ["p"], pads=[0, 0, 0, 0, 0, 0, 1, 1]),
         node("MaxPool", ["p"], ["y"], kernel_shape=[3, 3], strides=[2, 2])], {"x": X4}, ["y"], 9),
    # ---------------------------------------------------------------- resize and upsample
    "upsample_nearest_opset9": lambda: single("Upsample", X4, 9, {"s": f32(1, 1, 2, 3)}, ["s"], mode="nearest"),
    "upsample_linear_opset9": lambda: single("Upsample", X4, 9, {"s": f32(1, 1, 2, 2)}, ["s"], mode="linear"),
    "resize10_nearest_down": lambda: single("Resize", X4, 10, {"s": f32(1, 1, 0.5, 0.6)}, ["s"]),
    "resize_nearest_asymmetric_floor": lambda: single(
        "Resize", X4, 13, {"s": f32(1, 1, 2, 1.5)}, ["", "s"], coordinate_transformation_mode="asymmetric",
        nearest_mode="floor"),
    "resize_nearest_half_pixel_ceil": lambda: single(
        "Resize", X4, 13, {"s": f32(1, 1, 1.7, 0.7)}, ["", "s"], nearest_mode="round_prefer_ceil"),
    "resize_linear_half_pixel": lambda: single("Resize", X4, 13, {"s": f32(1, 1, 2, 0.5)}, ["", "s"], mode="linear"),
    "resize_linear_align_corners_sizes": lambda: single(
        "Resize", X4, 13, {"sz": i64(2, 3, 17, 4)}, ["", "", "sz"], mode="linear",
        coordinate_transformation_mode="align_corners"),
    "resize_linear_pytorch_half_pixel": lambda: single(
        "Resize", X4, 11, {"roi": f32(), "s": f32(), "sz": i64(2, 3, 1, 20)}, ["roi", "s", "sz"], mode="linear",
        coordinate_transformation_mode="pytorch_half_pixel"),
    "resize_cubic_exclude_outside": lambda: single(
        "Resize", X4, 13, {"s": f32(1, 1, 1.5, 2)}, ["", "s"], mode="cubic", exclude_outside=1),
    "resize_cubic_asymmetric": lambda: single(
        "Resize", X4, 13, {"s": f32(1, 1, 2, 2)}, ["", "s"], mode="cubic", cubic_coeff_a=-0.5,
        coordinate_transformation_mode="asymmetric"),
    # ---------------------------------------------------------------- shape arithmetic
    "shape_gather_concat_reshape": lambda: make_model(
        [node("Shape", ["x"], ["s"]), node("Gather", ["s", "zero"], ["n"], axis=0),
         node("Unsqueeze", ["n", "zero_axes"], ["n1"]), node("Concat", ["n1", "minus_one"], ["target"], axis=0),
         node("Reshape", ["x", "target"], ["y"])],
        {"x": X4}, ["y"], 13, {"zero": np.array(0, np.int64), "zero_axes": i64(0), "minus_one": i64(-1)}),
    "where_equal_range_expand": lambda: make_model(
        [node("Range", ["start", "limit", "delta"], ["r"]), node("Cast", ["r"], ["rf"], to=FLOAT),
         node("Expand", ["rf", "shape"], ["e"]), node("Equal", ["r", "three"], ["mask"]),
         node("Where", ["mask", "x", "e"], ["y"]), node("ConstantOfShape", ["shape"], ["fill"],
                                                        value=numpy_helper.from_array(f32(0.25))),
         node("Add", ["y", "fill"], ["z"])],
        {"x": [4, 1, 10]}, ["y", "z"], 13,
        {"start": np.array(1, np.int64), "limit": np.array(11, np.int64), "delta": np.array(1, np.int64),
         "shape": i64(4, 3, 1), "three": np.array(3, np.int64)}),
    "constant_node_and_math": lambda: make_model(
        [helper.make_node("Constant", [], ["c"], "const", value=numpy_helper.from_array(f32(0.5, 2.0, 3.0))),
         node("Abs", ["x"], ["a"]), node("Add", ["a", "c"], ["b"]), node("Sqrt", ["b"], ["s"]),
         node("Log", ["b"], ["l"]), node("Exp", ["l"], ["e"]), node("Neg", ["e"], ["n"]),
         node("Pow", ["s", "c"], ["p"]), node("Div", ["p", "n"], ["d"]), node("Sub", ["d", "s"], ["y"])],
        {"x": [2, 4, 3]}, ["y"], 13),
    "gemm_alpha_beta_trans_a": lambda: make_model(
        [node("Gemm", ["x", "w", "c"], ["y"], alpha=0.5, beta=2.0, transA=1)], {"x": [5, 2]}, ["y"], 13,
        {"w": weights(5, 4), "c": weights(2, 4)}),
    "matmul_batched": lambda: make_model([node("MatMul", ["x", "w"], ["y"])], {"x": [2, 3, 5]}, ["y"], 13,
                                         {"w": weights(5, 4)}),
    "cast_to_int_and_back": lambda: make_model(
        [node("Mul", ["x", "ten"], ["m"]), node("Cast", ["m"], ["i"], to=TensorProto.INT32),
         node("Cast", ["i"], ["y"], to=FLOAT)], {"x": X4}, ["y"], 13, {"ten": f32(10)}),
    # ---------------------------------------------------------------- beyond the issue's list
    "more_activations": lambda: make_model(
        [node("Mish", ["x"], ["a"]), node("ThresholdedRelu", ["a"], ["b"], alpha=0.1), node("Softplus", ["b"], ["c"]),
         node("Softsign", ["c"], ["d"]), node("Celu", ["x"], ["e"], alpha=0.5), node("Reciprocal", ["d"], ["f"]),
         node("Sign", ["e"], ["g"]), node("Sin", ["g"], ["h"]), node("Cos", ["f"], ["i"]),
         node("Max", ["h", "i", "x"], ["j"]), node("Min", ["j", "x"], ["k"]), node("Sum", ["k", "e"], ["l"]),
         node("Mean", ["l", "a", "b"], ["m"]), node("LpNormalization", ["m"], ["y"], axis=1)],
        {"x": X4}, ["y"], 18),
    "more_reductions": lambda: make_model(
        [node("ReduceMin", ["x", "ax"], ["a"]), node("ReduceProd", ["x", "ax2"], ["b"], keepdims=0),
         node("ReduceL2", ["x", "ax"], ["c"]), node("ReduceSumSquare", ["x"], ["d"]),
         node("ReduceL1", ["x", "ax"], ["e"]), node("ReduceLogSumExp", ["x", "ax"], ["f"]),
         node("ArgMax", ["x"], ["g"], axis=2, keepdims=0), node("ArgMax", ["x"], ["h"], axis=1, select_last_index=1)],
        {"x": X4}, ["a", "b", "c", "d", "e", "f", "g", "h"], 18, {"ax": i64(1), "ax2": i64(2, 3)}),
    "logic_rounding_tile_size": lambda: make_model(
        [node("Greater", ["x", "zero"], ["gt"]), node("Less", ["x", "half"], ["lt"]), node("And", ["gt", "lt"], ["a"]),
         node("Not", ["a"], ["na"]), node("Or", ["na", "gt"], ["o"]), node("Xor", ["o", "lt"], ["xo"]),
         node("GreaterOrEqual", ["x", "zero"], ["ge"]), node("LessOrEqual", ["x", "zero"], ["le"]),
         node("Where", ["xo", "x", "half"], ["w"]), node("Mul", ["w", "ten"], ["m"]), node("Floor", ["m"], ["fl"]),
         node("Ceil", ["m"], ["ce"]), node("Round", ["m"], ["ro"]), node("Tile", ["ro", "reps"], ["y"]),
         node("Size", ["y"], ["n"]), node("CastLike", ["n", "x"], ["nf"]), node("Add", ["fl", "ce"], ["z"])],
        {"x": X4}, ["y", "nf", "z", "ge", "le"], 15,
        {"zero": f32(0), "half": f32(0.5), "ten": f32(10), "reps": i64(1, 2, 1, 3)}),
    "dropout_attr_and_identity_opset10": lambda: make_model(
        [node("Dropout", ["x"], ["d"], ratio=0.3), node("Identity", ["d"], ["y"])], {"x": X4}, ["y"], 10),
    "dropout_with_mask_opset13": lambda: make_model([node("Dropout", ["x"], ["y", "mask"])], {"x": X4},
                                                    ["y", "mask"], 13),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_op_matches_onnxruntime(case):
    model = CASES[case]()
    feeds = {value.name: RNG.standard_normal([d.dim_value for d in value.type.tensor_type.shape.dim])
             .astype(np.float32) for value in model.graph.input}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    module = onnx_to_torch(model).eval()
    with torch.no_grad():
        got = module(*[torch.from_numpy(v) for v in feeds.values()])
    got = got if isinstance(got, tuple) else (got,)
    for g, r in zip(got, expected, strict=True):
        g = g.numpy()
        assert g.shape == r.shape and g.dtype == r.dtype, (g.shape, r.shape, g.dtype, r.dtype)
        diff = float(np.abs(g.astype(np.float64) - r).max())
        assert diff <= 1e-4 and diff <= 1e-5 * max(float(np.abs(r).max()), 1e-12), diff


def test_unsupported_op_names_node_op_and_opset():
    model = make_model([node("Relu", ["x"], ["r"]), helper.make_node("Einsum", ["r", "r"], ["y"], "mix",
                                                                     equation="ij,ij->i")], {"x": [2, 3]}, ["y"], 17)
    with pytest.raises(UnsupportedOpError, match=r"node 'mix' \(Einsum, opset 17\) has no PyTorch converter; "
                                                  r"supported ops: .*Conv"):
        onnx_to_torch(model)


def test_custom_domain_and_control_flow_are_refused():
    graph = helper.make_graph([helper.make_node("FusedConv", ["x"], ["y"], "fused", domain="com.microsoft")], "g",
                              [helper.make_tensor_value_info("x", FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(UnsupportedOpError, match="com.microsoft::FusedConv"):
        onnx_to_torch(model)
    branch = helper.make_graph([node("Identity", ["x"], ["out"])], "branch", [],
                               [helper.make_tensor_value_info("out", FLOAT, [2, 3])])
    model = make_model([node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)],
                       {"x": [2, 3]}, ["y"], 13, {"cond": np.array(True)})
    with pytest.raises(BadModelError, match="subgraph"):
        onnx_to_torch(model)


def test_issue_op_list_is_covered():
    required = """Conv ConvTranspose BatchNormalization InstanceNormalization LayerNormalization Relu LeakyRelu PRelu
    Elu Selu Clip Sigmoid HardSigmoid HardSwish Tanh Softmax LogSoftmax Gelu Erf MaxPool AveragePool
    GlobalAveragePool GlobalMaxPool ReduceMean ReduceSum ReduceMax LRN Flatten Reshape Transpose Squeeze Unsqueeze
    Concat Split Slice Gather Shape Constant ConstantOfShape Cast Identity Dropout Pad Resize Add Sub Mul Div Pow
    Sqrt Exp Log Neg Abs MatMul Gemm Expand Where Equal Range""".split()
    assert not set(required) - set(supported_ops())


def test_reexport_refuses_run_time_shapes_with_dynamic_batch(tmp_path):
    module = onnx_to_torch(CASES["shape_gather_concat_reshape"]())
    assert module.computes_shapes
    with pytest.raises(BadOptionError, match="write_back"):
        reexport(module, torch.randn(2, 3, 9, 10), tmp_path / "s.onnx", input_names=["x"], output_names=["y"])


def test_roles_of_initializers():
    """Per-channel Mul/Add constants train (unfused BN, Keras bias adds); scalars and shape tensors stay fixed."""
    module = onnx_to_torch(CASES["tf2onnx_nhwc_conv_block"]())
    assert sorted(module.onnx_names.values()) == ["b", "scale", "shift", "w"]
    assert sorted(name for name, _ in module.named_parameters()) == ["b", "scale", "shift", "w"]
    for case in ("cast_to_int_and_back", "shape_gather_concat_reshape", "constant_node_and_math"):
        module = onnx_to_torch(CASES[case]())
        assert not list(module.parameters()) and not module.state_dict(), case
