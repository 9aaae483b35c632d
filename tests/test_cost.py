"""Parameter and FLOP counts against independent torch-side references."""
from __future__ import annotations

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from fp_onnx.cost import count_flops, count_parameters, flop_breakdown
from model_zoo import ARCHITECTURES, build_module


def torch_flops(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs by forward hooks: 2 per MAC plus bias adds for Conv2d/Linear, 1 per output for ReLU,
    1 per window element for MaxPool2d (matches the convention in fp_onnx/cost.py)."""
    total = 0

    def hook(layer: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal total
        n = output.numel()
        if isinstance(layer, nn.Conv2d):
            total += 2 * n * (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
            total += n if layer.bias is not None else 0
        elif isinstance(layer, nn.Linear):
            total += 2 * n * layer.in_features + n
        elif isinstance(layer, nn.ReLU):
            total += n
        elif isinstance(layer, nn.MaxPool2d):
            total += n * layer.kernel_size ** 2

    for layer in module.modules():
        layer.register_forward_hook(hook)
    module(torch.zeros(1, *input_shape))
    return total


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_alexnet_counts_match_torch(zoo_model, exporter):
    model = zoo_model("alexnet", exporter)
    module = build_module("alexnet")
    assert count_parameters(model) == sum(p.numel() for p in module.parameters())
    assert count_flops(model) == torch_flops(module, ARCHITECTURES["alexnet"].input_shape)
    assert flop_breakdown(model).uncounted == []


def test_unfused_batchnorm_counts_its_statistics(zoo_model):
    module = build_module("convbn")
    tensors = sum(p.numel() for p in module.parameters()) + sum(
        b.numel() for name, b in module.named_buffers() if not name.endswith("num_batches_tracked"))
    assert count_parameters(zoo_model("convbn", "legacy")) == tensors


def test_deepid_flops_are_counted_per_sample_and_by_op(zoo_model):
    model = zoo_model("deepid", "legacy")
    breakdown = flop_breakdown(model)
    assert breakdown.total == count_flops(model) == sum(breakdown.by_op_type.values())
    # conv1: 8 filters of 3x4x4 over a 52x44 output, plus one bias add per output.
    assert breakdown.by_op_type["Conv"] > 2 * 8 * 52 * 44 * 3 * 4 * 4
    assert breakdown.by_op_type["Gemm"] == (2 * 320 * 32 + 32) + (2 * 240 * 32 + 32) + (2 * 32 * 10 + 10)


def test_unknown_ops_count_zero_and_are_listed():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], "relu"), helper.make_node("Celu", ["r"], ["y"], "celu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])])
    breakdown = flop_breakdown(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    assert (breakdown.total, breakdown.uncounted) == (6, ["Celu"])


def test_unused_and_integer_initializers_are_not_parameters(zoo_model):
    model = onnx.ModelProto()
    model.CopyFrom(zoo_model("keras_nhwc"))
    model.graph.initializer.append(onnx.numpy_helper.from_array(
        torch.zeros(7).numpy(), "unused"))
    # 8*3*3*3+8 + 12*8*3*3+12 + 3072*10+10; the int64 Reshape shape is not a parameter.
    assert count_parameters(model) == 224 + 876 + 30730
