"""The memory budget: activation estimates from inferred shapes, and batches and sweep chunks sized to it."""
from __future__ import annotations

import resource

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp_onnx.data import ArrayDataset
from fp_onnx.errors import ResourceLimitError
from fp_onnx.inference import ModelRunner
from fp_onnx.memory import activation_bytes, available_memory, budget_bytes, rows_within, weight_bytes
from fp_onnx.prune_point import resolve_prune_point
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.sweep import PruneSweep


def _conv_model():
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"], "relu"),
         helper.make_node("GlobalAveragePool", ["r"], ["y"], "pool")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1])], [weight])
    import onnx

    return onnx.shape_inference.infer_shapes(helper.make_model(graph, ir_version=8,
                                                               opset_imports=[helper.make_opsetid("", 13)]))


def test_activation_bytes_sum_every_tensor_computed_from_the_input_per_sample():
    total, largest = activation_bytes(_conv_model())
    assert total == 4 * (3 * 64 + 4 * 64 + 4 * 64 + 4)  # input, conv, relu, pool; the weight is not counted
    assert largest in ("c", "r")


def test_weight_bytes_are_exact_for_every_storage_of_the_values():
    """float64 in typed fields (double_data), int64 in int64_data, float16 as raw data and a float32 tensor whose
    values live in external data (no raw_data here) each count their element size, not 4 bytes a value."""
    model = _conv_model()
    doubles = helper.make_tensor("d", TensorProto.DOUBLE, [5], [1.0] * 5)  # typed field, 8 bytes each
    longs = helper.make_tensor("i", TensorProto.INT64, [3], [1, 2, 3])
    halves = numpy_helper.from_array(np.ones(6, np.float16), "h")  # raw data
    external = TensorProto(name="e", data_type=TensorProto.FLOAT, dims=[7], data_location=TensorProto.EXTERNAL)
    model.graph.initializer.extend([doubles, longs, halves, external])
    assert weight_bytes(model) == 4 * 108 + 8 * 5 + 8 * 3 + 2 * 6 + 4 * 7


def test_rows_within_the_budget():
    assert rows_within(1000, 100, 64) == 10
    assert rows_within(10**9, 100, 64) == 64
    assert rows_within(10, 100, 64) == 1


def test_available_memory_respects_the_address_space_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    mapped = available_memory()
    with open("/proc/self/statm") as statm:
        in_use = int(statm.read().split()[0]) * resource.getpagesize()
    cap = in_use + 512 * 1024**2
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        capped = available_memory()
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert capped <= 512 * 1024**2 + 16 * 1024**2 and capped <= mapped
    assert budget_bytes(12345) == 12345 and 0 < budget_bytes(0) <= mapped


def test_runner_batches_shrink_to_the_budget_and_refuse_one_sample_beyond_it():
    model = _conv_model()
    per_sample = activation_bytes(model)[0]
    weights = 4 * 3 * 3 * 3 * 4
    runner = ModelRunner(model, options=RuntimeOptions(device="cpu", max_memory=3 * weights + 10 * per_sample))
    assert runner.batch_size(64) == 10 and runner.batch_size(4) == 4
    tiny = ModelRunner(model, options=RuntimeOptions(device="cpu", max_memory=per_sample))
    with pytest.raises(ResourceLimitError, match="for ONE sample"):
        tiny.batch_size(64)


def test_sweep_chunks_follow_the_budget_and_give_the_same_curve(zoo_model):
    model = zoo_model("alexnet", "legacy")
    point = resolve_prune_point(model, None)
    rng = np.random.default_rng(0)
    data = ArrayDataset(rng.standard_normal((20, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 20))
    order, steps = np.arange(point.channels)[::-1], list(range(point.channels))
    roomy = PruneSweep(model, point, RuntimeOptions(device="cpu", max_memory=2**32))
    tight = PruneSweep(model, point, RuntimeOptions(device="cpu", max_memory=2 * 1024**2))
    assert tight.tail_rows < roomy.tail_rows and tight.head.batch_size(64, 0.5, tight.contribution_bytes) < 20
    expected = roomy.predictions(data, order, steps, batch_size=64)
    np.testing.assert_array_equal(tight.predictions(data, order, steps, batch_size=64), expected)
    tight.tail_rows = tight.rest_rows = 5  # one prune step per tail call
    np.testing.assert_array_equal(tight.predictions(data, order, steps, batch_size=64), expected)
    tight.prefix = None  # and the masked path, chunked the same way
    np.testing.assert_array_equal(tight.predictions(data, order, steps, batch_size=64), expected)
