"""The pruning defense: the fast sweep equals running each pruned model; the paper's stop rule."""
from __future__ import annotations

import numpy as np
import pytest

import model_zoo
from fp_onnx.data import ArrayDataset
from fp_onnx.errors import BadDataError, BadOptionError
from fp_onnx.inference import ModelRunner, predictions
from fp_onnx.metrics import AttackSpec
from fp_onnx.prune import PruneCurve, StopRule, channels_to_prune, measure_curve, prune_defense
from fp_onnx.prune_point import find_prune_points, resolve_prune_point
from fp_onnx.runtime import RuntimeOptions
from fp_onnx.surgery import mask_channels
from fp_onnx.sweep import PruneSweep

CPU = RuntimeOptions(device="cpu")

SWEEP_CASES = [
    ("alexnet", "legacy", "default", "affine-prefix"),
    ("alexnet", "dynamo", "default", "affine-prefix"),
    ("deepid", "legacy", "conv3", "affine-prefix"),
    ("deepid", "dynamo", "conv3", "affine-prefix"),
    ("deepid", "dynamo", "default", "affine-prefix"),
    ("resnet18", "legacy", "default", "running-sum"),
    ("resnet18", "legacy", "block", "affine-prefix"),
    ("mobilenetv2", "legacy", "default", "running-sum"),
    ("squeezenet", "legacy", "default", "affine-prefix"),
    ("keras_nhwc", "helper", "default", "running-sum"),
    ("caffe", "helper", "default", "affine-prefix"),
]


def _point(model, which):
    if which == "default":
        return resolve_prune_point(model, None)
    if which == "block":  # an inner residual block: the tail holds later residual Adds
        return resolve_prune_point(model, "layers.1")
    return next(p for p in find_prune_points(model) if p.channels == 16 and p.spatial == (5, 4))


def _inputs(model, count, seed=0):
    return next(iter(model_zoo.random_input(model, count, seed).values()))


@pytest.mark.parametrize("arch,exporter,which,method", SWEEP_CASES)
def test_sweep_equals_running_each_masked_model(zoo_model, arch, exporter, which, method):
    model = zoo_model(arch, exporter)
    point = _point(model, which)
    x = _inputs(model, 24)
    data = ArrayDataset(x)
    order = np.random.default_rng(1).permutation(point.channels)
    steps = sorted({0, 1, point.channels // 2, point.channels - 1})
    sweep = PruneSweep(model, point, CPU)
    fast = sweep.predictions(data, order, steps, batch_size=10)
    assert sweep.method == method
    for row, k in enumerate(steps):
        reference = mask_channels(model, point, order[:k]) if k else model
        expected = predictions(ModelRunner(reference, options=CPU).run(x)[reference.graph.output[0].name])
        np.testing.assert_array_equal(fast[row], expected, err_msg=f"step {k}")


def _curve(accuracies):
    n = len(accuracies)
    return PruneCurve(list(range(n)), list(range(n)), list(accuracies), None, "test")


def test_threshold_rule_keeps_the_last_model_within_the_drop():
    curve = _curve([0.90, 0.90, 0.89, 0.87, 0.85, 0.60, 0.88])
    assert channels_to_prune(curve, StopRule("threshold", 0.04)) == 3  # 0.90 - 0.85 = 0.05 > 0.04 at step 4
    assert channels_to_prune(curve, StopRule("threshold", 0.05)) == 4
    assert channels_to_prune(curve, StopRule("threshold", 0.0)) == 1
    assert channels_to_prune(curve, StopRule("threshold", 1.0)) == 6  # never all channels


def test_fraction_and_channel_rules():
    curve = _curve([1.0] * 10)
    assert channels_to_prune(curve, StopRule("fraction", 0.35)) == 3
    assert channels_to_prune(curve, StopRule("fraction", 1.0)) == 9
    assert channels_to_prune(curve, StopRule("channels", 4)) == 4
    with pytest.raises(BadOptionError, match="at most 9"):
        channels_to_prune(curve, StopRule("channels", 10))


@pytest.mark.parametrize("kind,value", [("threshold", -0.1), ("threshold", 1.5), ("fraction", 2.0), ("channels", 2.5), ("magic", 0.1)])
def test_invalid_stop_rules(kind, value):
    with pytest.raises(BadOptionError):
        StopRule(kind, value)


def test_prune_defense_end_to_end(zoo_model):
    model = zoo_model("alexnet", "legacy")
    point = resolve_prune_point(model, None)
    x = _inputs(model, 60, seed=3)
    labels = predictions(ModelRunner(model, options=CPU).run(x)["logits"])  # clean accuracy starts at 1.0
    triggered = x.copy()
    triggered[:, :, -8:, -8:] = 4.0
    outcome = prune_defense(model, point, ArrayDataset(x, labels), StopRule("threshold", 0.1),
                            triggered=ArrayDataset(triggered, labels), attack=AttackSpec("untargeted"), options=CPU)
    curve = outcome.curve
    assert curve.clean_accuracy[0] == 1.0 and len(curve.clean_accuracy) == point.channels
    assert curve.order == outcome.profile.pruning_order().tolist()
    kept = outcome.channels_pruned
    assert all(1.0 - acc <= 0.1 for acc in curve.clean_accuracy[: kept + 1])
    if kept < point.channels - 1:
        assert 1.0 - curve.clean_accuracy[kept + 1] > 0.1
    pruned_accuracy = float((predictions(ModelRunner(outcome.surgery.model, options=CPU).run(x)["logits"]) == labels).mean())
    assert pruned_accuracy == pytest.approx(curve.clean_accuracy[kept])
    assert len(outcome.surgery.channels_kept) == point.channels - kept
    assert len(curve.attack_success) == point.channels
    report = outcome.to_dict()
    assert report["channels_pruned"] == kept and report["pruned_channels"] == curve.order[:kept]


def test_pruning_needs_labels(zoo_model):
    model = zoo_model("alexnet", "legacy")
    point = resolve_prune_point(model, None)
    with pytest.raises(BadDataError, match="needs labels"):
        measure_curve(model, point, np.arange(point.channels), ArrayDataset(_inputs(model, 4)), options=CPU)


def _identity_fed_graph():
    """Conv -> Relu (the point) -> GAP -> Mul by a shared scale -> Flatten -> Gemm, with the scale and the
    Gemm weight fed through Identity nodes the way the TorchScript exporter shares deduplicated
    initializers (a second reader, a bias Add, shares the scale)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    inits = {"w": rng.standard_normal((6, 3, 3, 3)).astype(np.float32), "scale": rng.random((1, 6, 1, 1), np.float32) + 0.5,
             "fc_w": rng.standard_normal((4, 6)).astype(np.float32), "fc_b": rng.standard_normal(4).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], "relu"),
             helper.make_node("Identity", ["scale"], ["scale_shared"], "dedup_scale"),
             helper.make_node("Identity", ["scale_shared"], ["scale_twice"], "dedup_scale_2"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], "pool"),
             helper.make_node("Mul", ["p", "scale_twice"], ["m"], "scale_mul"),
             helper.make_node("Add", ["m", "scale_shared"], ["a"], "shift"),
             helper.make_node("Flatten", ["a"], ["f"], "flatten"),
             helper.make_node("Identity", ["fc_w"], ["fc_w_shared"], "dedup_fc"),
             helper.make_node("Gemm", ["f", "fc_w_shared", "fc_b"], ["logits"], "fc", transB=1)]
    graph = helper.make_graph(nodes, "identity_fed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return model_zoo.load_for_tests_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                                            ir_version=8))


def test_sweep_treats_identity_fed_initializers_as_constants():
    """The tail reads constants through Identity chains: they are constants of the tail, not tensors
    crossing the cut (the sweep used to feed `features.norm5.weight` as data), and the prefix stays affine."""
    from fp_onnx.surgery import prune_channels
    from fp_onnx.sweep import cut_at

    model = _identity_fed_graph()
    point = resolve_prune_point(model, "relu")
    assert cut_at(model, point).crossing == ("r",)
    x = np.random.default_rng(2).standard_normal((12, 3, 8, 8)).astype(np.float32)
    order = np.random.default_rng(3).permutation(point.channels)
    sweep = PruneSweep(model, point, CPU)
    fast = sweep.predictions(ArrayDataset(x), order, range(point.channels), batch_size=5)
    assert sweep.method == "running-sum"
    for k in range(point.channels):
        reference = mask_channels(model, point, order[:k]) if k else model
        np.testing.assert_array_equal(fast[k], predictions(ModelRunner(reference, options=CPU).run(x)["logits"]))
    result = prune_channels(model, point, order[:3])  # the shared scale gets a private copy for the Mul
    assert result.physically_removed
    np.testing.assert_allclose(ModelRunner(result.model, options=CPU).run(x)["logits"],
                               ModelRunner(mask_channels(model, point, order[:3]), options=CPU).run(x)["logits"],
                               rtol=1e-5, atol=1e-5)
