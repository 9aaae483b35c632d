"""Safe loading of untrusted ONNX files: what is accepted, what is refused, and why."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fp_onnx.errors import BadModelError, UnsafeFileError
from fp_onnx.loading import load_model
from fuzzing.model_mutators import point_to_external
from model_zoo import build_caffe_style_model, export_torch, AlexNet


def _tiny_model(weight_name: str = "w") -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), weight_name)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", weight_name], ["y"])],  # deliberately unnamed
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _with_external_location(model: onnx.ModelProto, location: str, length: int = 432) -> onnx.ModelProto:
    point_to_external(model.graph.initializer[0], location, length=str(length))
    return model


def test_torch_dynamo_export_with_external_data_loads(tmp_path):
    path = export_torch(AlexNet().eval(), tmp_path / "alexnet.onnx", "dynamo", input_shape=(3, 32, 32))
    assert (tmp_path / "alexnet.onnx.data").exists()
    loaded = load_model(path)
    assert all(t.data_location != TensorProto.EXTERNAL for t in loaded.model.graph.initializer)
    assert "alexnet.onnx.data" in loaded.data_sha256
    assert len(loaded.sha256) == 64


def test_unnamed_nodes_get_unique_names(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(_tiny_model(), path)
    loaded = load_model(path)
    names = [node.name for node in loaded.model.graph.node]
    assert names == ["Conv_0"]
    assert loaded.model.graph.value_info or loaded.model.graph.output[0].type.tensor_type.shape.dim


@pytest.mark.parametrize("location", ["/etc/passwd", "../secret.bin", "sub/../../secret.bin"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, location):
    folder = tmp_path / "vendor"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 432)
    path = folder / "model.onnx"
    onnx.save(_with_external_location(_tiny_model(), location), path)
    with pytest.raises(UnsafeFileError, match="outside the model's folder"):
        load_model(path)


def test_symlink_leaving_the_folder_is_refused(tmp_path):
    folder = tmp_path / "vendor"
    folder.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"\0" * 432)
    os.symlink(tmp_path / "secret.bin", folder / "weights.bin")
    path = folder / "model.onnx"
    onnx.save(_with_external_location(_tiny_model(), "weights.bin"), path)
    with pytest.raises(UnsafeFileError, match="link that leaves"):
        load_model(path)


def test_external_data_range_beyond_the_file_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)
    path = tmp_path / "model.onnx"
    onnx.save(_with_external_location(_tiny_model(), "weights.bin"), path)
    with pytest.raises(UnsafeFileError, match="only 10 bytes"):
        load_model(path)


def test_external_data_inside_the_folder_loads(tmp_path):
    (tmp_path / "weights.bin").write_bytes(np.full((4, 3, 3, 3), 2.0, np.float32).tobytes())
    path = tmp_path / "model.onnx"
    onnx.save(_with_external_location(_tiny_model(), "weights.bin"), path)
    weight = numpy_helper.to_array(load_model(path).model.graph.initializer[0])
    assert np.all(weight == 2.0)


def test_size_cap(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(_tiny_model(), path)
    with pytest.raises(UnsafeFileError, match="size cap"):
        load_model(path, max_bytes=100)


@pytest.mark.parametrize("content", [b"", b"not an onnx file at all", bytes(range(256)) * 4])
def test_garbage_is_not_a_model(tmp_path, content):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(BadModelError, match="not an ONNX model"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(BadModelError, match="no such file"):
        load_model(tmp_path / "absent.onnx")


def test_invalid_graph_fails_the_checker(tmp_path):
    model = _tiny_model()
    model.graph.node[0].input[1] = "does_not_exist"
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    with pytest.raises(BadModelError, match="invalid ONNX model"):
        load_model(path)


def test_domain_onnxruntime_cannot_run(tmp_path):
    model = _tiny_model()
    model.graph.node.append(helper.make_node("Mystery", ["y"], ["z"], domain="com.vendor.secret"))
    model.graph.output[0].name = "z"
    model.opset_import.append(helper.make_opsetid("com.vendor.secret", 1))
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    with pytest.raises(BadModelError, match="com.vendor.secret"):
        load_model(path)


def test_initializers_listed_as_inputs_load(tmp_path):
    path = tmp_path / "caffe.onnx"
    onnx.save(build_caffe_style_model(), path)
    loaded = load_model(path)
    assert len(loaded.model.graph.input) > 1
