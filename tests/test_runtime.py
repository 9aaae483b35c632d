"""onnxruntime sessions, provider choice, fixed batch-1 graphs and tapped tensors."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp_onnx.errors import BadDataError, BadModelError, BadOptionError
from fp_onnx.inference import ModelRunner, predictions
from fp_onnx.runtime import RuntimeOptions, create_session, cuda_device_count, select_providers
from model_zoo import build_caffe_style_model, build_keras_nhwc_model


def test_cpu_device_uses_only_the_cpu_provider():
    assert select_providers("cpu") == ["CPUExecutionProvider"]


@pytest.mark.skipif(cuda_device_count() > 0, reason="machine has a GPU")
def test_auto_on_a_cpu_machine_is_quiet_and_cpu_only(capfd):
    assert select_providers("auto") == ["CPUExecutionProvider"]
    session = create_session(build_keras_nhwc_model(), RuntimeOptions(device="auto"))
    assert session.get_providers() == ["CPUExecutionProvider"]
    captured = capfd.readouterr()
    assert "CUDA" not in captured.err and "TensorRT" not in captured.err


@pytest.mark.skipif(cuda_device_count() > 0, reason="machine has a GPU")
@pytest.mark.parametrize("device", ["cuda", "tensorrt"])
def test_asking_for_a_gpu_without_one_is_one_clear_error(device):
    with pytest.raises(BadOptionError, match="no CUDA GPU usable"):
        select_providers(device)


@pytest.mark.skipif(cuda_device_count() == 0, reason="needs a CUDA GPU")
def test_cuda_session_really_runs_on_the_gpu():
    session = create_session(build_keras_nhwc_model(), RuntimeOptions(device="cuda"))
    assert session.get_providers()[0] == "CUDAExecutionProvider"


def test_runtime_options_are_validated():
    with pytest.raises(BadOptionError):
        RuntimeOptions(device="tpu")
    with pytest.raises(BadOptionError):
        RuntimeOptions(optimization="max")
    with pytest.raises(BadOptionError):
        RuntimeOptions(threads=-1)


def _reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def test_fixed_batch_one_graph_runs_batched_after_verification():
    model = build_caffe_style_model()
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    runner = ModelRunner(model, taps=["relu2"], options=RuntimeOptions(device="cpu"))
    outputs = runner.run(x)
    np.testing.assert_allclose(outputs["prob"], _reference(model, x), rtol=1e-5, atol=1e-6)
    assert outputs["relu2"].shape == (5, 16, 16, 16)
    assert runner.notes == ["the model fixes its batch size at 1; running it with a symbolic batch (verified)"]


def test_fixed_batch_graph_that_cannot_batch_falls_back_to_single_samples():
    constant = numpy_helper.from_array(np.ones((1, 4), np.float32), "c")
    graph = helper.make_graph(
        [helper.make_node("Concat", ["x", "c"], ["y"], "concat", axis=1)],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [constant],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    runner = ModelRunner(model, options=RuntimeOptions(device="cpu"))
    np.testing.assert_array_equal(runner.run(x)["y"], _reference(model, x))
    assert any("one sample at a time" in note for note in runner.notes)


def test_unknown_tap_and_multi_input_models_are_refused():
    with pytest.raises(BadModelError, match="no tensor named 'ghost'"):
        ModelRunner(build_keras_nhwc_model(), taps=["ghost"], options=RuntimeOptions(device="cpu"))
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"], "add")], "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])],
    )
    with pytest.raises(BadModelError, match="single-input classifiers; this model has inputs: a, b"):
        ModelRunner(helper.make_model(graph, ir_version=8), options=RuntimeOptions(device="cpu"))


def test_a_batch_onnxruntime_rejects_is_a_data_error():
    runner = ModelRunner(build_keras_nhwc_model(), options=RuntimeOptions(device="cpu"))
    with pytest.raises(BadDataError, match=r"shape \[2, 3, 32, 32\]"):
        runner.run(np.zeros((2, 3, 32, 32), np.float32))


def test_predictions_accept_logits_and_conv_classifier_shapes():
    scores = np.array([[0.1, 0.9, 0.0], [2.0, -1.0, 0.5]])
    np.testing.assert_array_equal(predictions(scores), [1, 0])
    np.testing.assert_array_equal(predictions(scores[:, :, None, None]), [1, 0])
